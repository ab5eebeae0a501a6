"""Distributed data-parallel training on the CPU: two gloo processes under torchrun.

The oracle is a single process: with ``world_size`` processes of batch ``b`` the
:class:`~detkit.data.loader.TrainBatchSampler` gives each step the same images (flipped
the same way) as one process of batch ``2b``, and DDP averages the gradients, so a
model whose loss is a per-image mean (the YOLOv3-style grid, with group norm instead
of batch norm) must follow the same trajectory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from detkit.data.loader import TrainBatchSampler
from detkit.engine.checkpoint import load_checkpoint

CONFIG = """\
base: detkit:shapes_yolo_grid.yaml
data:
  train: {name: shapes, root: "${cwd}/data", split: train, num_train: 16, num_val: 4, image_size: 64}
  val: {name: shapes, root: "${cwd}/data", split: val, num_train: 16, num_val: 4, image_size: 64}
model:
  preprocess: {min_size: 64, max_size: 64}
  backbone: {norm: gn}
train:
  device: cpu
  max_iters: 5
  max_minutes: null
  batch_size: 4
  eval_period: 0
  log_period: 1
  warmup_iters: 0
  threads: 1
  deterministic: true
eval: {batch_size: 2, max_images: 3}
"""

#: A dataset plugin whose images fail on rank 1 from the third read on (not a DataError: not skipped).
FAILING_PLUGIN = '''
import os

import detkit
from detkit.data.shapes import ShapesDataset


class FailsOnRankOne(ShapesDataset):
    reads = 0

    def __getitem__(self, index):
        FailsOnRankOne.reads += 1
        if os.environ.get("RANK") == "1" and FailsOnRankOne.reads > 2:
            raise detkit.DetkitError(f"planted failure reading item {index}")
        return super().__getitem__(index)


@detkit.hookimpl
def detkit_add_components(registry):
    registry.register("dataset", "fails_on_rank_one", FailsOnRankOne)
'''


def detkit(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "detkit", "-q", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    (root / "tiny.yaml").write_text(CONFIG)
    one = detkit(root, "train", "tiny.yaml", "output.dir=runs/one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = detkit(root, "train", "tiny.yaml", "output.dir=runs/two", "train.batch_size=2", "--nproc", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    return root / "runs"


def test_two_processes_match_one_process_with_twice_the_batch(runs: Path) -> None:
    one = [r["loss"] for r in records(runs / "one") if r["type"] == "train"]
    two = [r["loss"] for r in records(runs / "two") if r["type"] == "train"]
    assert len(one) == len(two) == 5
    assert one == pytest.approx(two, abs=1e-4)
    a = load_checkpoint(runs / "one" / "last.pt")["model"]
    b = load_checkpoint(runs / "two" / "last.pt")["model"]
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, atol=1e-5, rtol=0, msg=name)


def test_only_rank_zero_writes_and_evaluation_covers_every_image(runs: Path) -> None:
    files = sorted(p.name for p in (runs / "two").iterdir())
    assert files == sorted(p.name for p in (runs / "one").iterdir())
    assert not list((runs / "two").glob(".*"))  # no temporary file left by a second writer
    assert len([r for r in records(runs / "two") if r["type"] == "eval"]) == 1
    metrics = json.loads((runs / "two" / "metrics.json").read_text())
    assert metrics["images"]["evaluated"] == 3  # sharded over the ranks, gathered on rank 0
    assert load_checkpoint(runs / "two" / "last.pt")["meta"]["world_size"] == 2


def test_a_failing_rank_ends_the_job_with_its_message(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(CONFIG)
    (tmp_path / "failing_plugin.py").write_text(textwrap.dedent(FAILING_PLUGIN))
    result = detkit(
        tmp_path, "train", "tiny.yaml", "-p", "failing_plugin", "train.batch_size=2", "--nproc", "2",
        "data.train.name=fails_on_rank_one", timeout=240,
    )
    assert result.returncode == 2
    assert "detkit: error: rank 1: planted failure reading item" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("detkit: error: the training job failed: rank 1")


def test_ranks_split_each_epoch_like_one_big_batch() -> None:
    one = TrainBatchSampler(10, batch_size=4, seed=3)
    ranks = [TrainBatchSampler(10, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    for epoch in (1, 2):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        big = list(one)
        small = [list(r) for r in ranks]
        assert len(big) == len(small[0]) == len(small[1]) == 2
        for step, batch in enumerate(big):
            assert sorted(batch) == sorted(small[0][step] + small[1][step])
    resumed = TrainBatchSampler(10, batch_size=4, seed=3)
    resumed.set_epoch(2, start=1)
    assert list(resumed) == big[1:]


def test_sync_bn_on_the_cpu_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(CONFIG)
    result = detkit(tmp_path, "train", "tiny.yaml", "train.sync_bn=true", "train.batch_size=2", "--nproc", "2")
    assert result.returncode == 2
    assert "train.sync_bn=true needs GPUs" in result.stderr
