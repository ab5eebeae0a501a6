"""Exact resume: a run killed with SIGKILL after a checkpoint and resumed ends with the same weights.

Each run is a real ``detkit train`` process on a small shapes set (64 px images),
so the test covers the CLI, the checkpoint's training state, the data position and
the RNG states together.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detkit.engine.checkpoint import load_checkpoint
from detkit.engine.resume import truncate_log
from detkit.errors import CheckpointError

CONFIG = """\
base: detkit:shapes_faster_rcnn.yaml
data:
  train: {name: shapes, root: "${cwd}/data", split: train, num_train: 16, num_val: 4, image_size: 64}
  val: {name: shapes, root: "${cwd}/data", split: val, num_train: 16, num_val: 4, image_size: 64}
model:
  preprocess: {min_size: 64, max_size: 64}
train:
  device: cpu
  max_iters: 24
  max_minutes: null
  batch_size: 2
  checkpoint_period: 4
  eval_period: 0
  log_period: 2
  warmup_iters: 2
  threads: 1
  deterministic: true
eval: {batch_size: 2, max_images: 2}
"""


def detkit(cwd: Path, *args: str, **popen: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "detkit", "-q", *args], cwd=cwd, env=env, **popen)  # type: ignore[call-overload]


def finish(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (err or b"").decode()[-3000:]


def train_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    (root / "tiny.yaml").write_text(CONFIG)
    finish(detkit(root, "train", "tiny.yaml", "output.dir=runs/full", stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return root


def test_killed_and_resumed_run_ends_with_bit_identical_weights(workdir: Path) -> None:
    killed = workdir / "runs" / "killed"
    proc = detkit(workdir, "train", "tiny.yaml", f"output.dir={killed}", stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (killed / "last.pt").exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = load_checkpoint(killed / "last.pt")["meta"]["iteration"]
    assert 0 < stopped_at < 24  # killed mid-run, after a checkpoint

    finish(detkit(workdir, "train", "--resume", str(killed), stdout=subprocess.PIPE, stderr=subprocess.PIPE))

    full = load_checkpoint(workdir / "runs" / "full" / "last.pt")
    resumed = load_checkpoint(killed / "last.pt")
    assert resumed["meta"]["iteration"] == full["meta"]["iteration"] == 24
    assert full["model"].keys() == resumed["model"].keys()
    for name, value in full["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    # the log holds each iteration once, with the same losses as the uninterrupted run
    assert [r["iter"] for r in train_records(killed)] == list(range(2, 25, 2))
    assert [r["loss"] for r in train_records(killed)] == [r["loss"] for r in train_records(workdir / "runs" / "full")]


def test_checkpoint_holds_the_training_state(workdir: Path) -> None:
    state = load_checkpoint(workdir / "runs" / "full" / "last.pt")["train_state"]
    assert {"optimizer", "scheduler", "rng", "epoch", "batches_done", "iteration", "elapsed", "best_ap"} <= set(state)
    assert state["iteration"] == 24 and state["epoch"] == 3  # 8 steps an epoch
    assert "train_state" not in load_checkpoint(workdir / "runs" / "full" / "best.pt")


def test_resume_auto_continues_and_a_finished_run_stays_finished(workdir: Path) -> None:
    run = workdir / "runs" / "full"
    before = (run / "metrics.jsonl").read_text()
    finish(detkit(workdir, "train", "tiny.yaml", f"output.dir={run}", "train.resume=auto",
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    assert (run / "metrics.jsonl").read_text() == before


def test_longer_schedule_continues_from_a_finished_run(workdir: Path, tmp_path: Path) -> None:
    """``--resume`` with an override: more iterations train on from iteration 24."""
    run = workdir / "runs" / "longer"
    finish(detkit(workdir, "train", "tiny.yaml", f"output.dir={run}", "train.max_iters=8",
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    finish(detkit(workdir, "train", "--resume", str(run), "train.max_iters=12",
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    assert [r["iter"] for r in train_records(run)] == [2, 4, 6, 8, 10, 12]


def test_resume_without_a_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    proc = detkit(tmp_path, "train", "--resume", str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.decode().strip().splitlines()[-1].startswith("detkit: error: --resume")


def test_weights_only_checkpoint_cannot_resume(workdir: Path) -> None:
    from detkit.engine.resume import load_train_state

    with pytest.raises(CheckpointError, match=r"train\.init_weights"):
        load_train_state(workdir / "runs" / "full" / "best.pt")


def test_truncate_log_drops_what_comes_after_the_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    records = [
        {"type": "train", "iter": 2}, {"type": "train", "iter": 4}, {"type": "eval", "iter": 4},
        {"type": "train", "iter": 6},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"type": "tr')  # cut by a kill
    assert truncate_log(log, 4, evaluated=False) == 3
    assert [json.loads(line) for line in log.read_text().splitlines()] == records[:2]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert truncate_log(log, 4, evaluated=True) == 1
