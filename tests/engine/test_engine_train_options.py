"""Training options: gradient accumulation, EMA, mixed precision, periodic checkpoints, max_iters, logs.

The model regresses one box per image from the image's mean colour; its loss is a
per-image mean, so ``accumulate`` batches of ``b`` must give the same update as
one batch of ``accumulate * b`` (the oracle), and the EMA is checked against the
formula applied by hand.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field

import pytest
import torch
from torch import Tensor, nn

from detkit.device import _cpu_has
from detkit.engine import Trainer, load_checkpoint
from detkit.engine.ema import ModelEMA
from detkit.errors import ConfigError
from detkit.structures import Detections, Targets

SIZE = 16


@dataclass
class Batch:
    images: list[Tensor]
    targets: list[Targets]
    image_ids: list[int] = field(default_factory=list)


def items(n: int, seed: int = 0) -> list[tuple[Tensor, Targets]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        image = torch.rand(3, SIZE, SIZE, generator=g)
        c = image.mean((1, 2))
        box = torch.stack([c[0], c[1], c[0] + 0.5, c[1] + 0.5]) * SIZE
        out.append((image, Targets(boxes=box[None], labels=torch.zeros(1, dtype=torch.int64))))
    return out


def batches(data: list[tuple[Tensor, Targets]], size: int) -> list[Batch]:
    return [Batch([im for im, _ in data[i : i + size]], [t for _, t in data[i : i + size]])
            for i in range(0, len(data), size)]


class ColourBox(nn.Module):
    """box = linear(mean colour); loss: mean over images of the L1 box error (in image units)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 4)

    def forward(self, images: list[Tensor], targets: list[Targets] | None = None):
        colours = torch.stack([im.mean((1, 2)) for im in images])
        boxes = self.linear(colours) * SIZE
        if not self.training:
            dets = [Detections(boxes=b[None].float(), scores=torch.ones(1), labels=torch.zeros(1, dtype=torch.int64))
                    for b in boxes]
            return dets, {}
        assert targets is not None
        gt = torch.stack([t.boxes[0] for t in targets])
        per_image = (boxes.float() - gt).abs().mean(1) / SIZE
        return [], {"loss_box": per_image.mean()}


def config(**train: object) -> dict:
    base = {
        "device": "cpu", "epochs": 2, "max_iters": None, "max_minutes": None, "optimizer": "sgd", "lr": 0.5,
        "momentum": 0.9, "weight_decay": 0.0, "schedule": "constant", "warmup_iters": 0, "warmup_factor": 0.1,
        "clip_grad_norm": None, "eval_period": 0, "log_period": 1,
    }
    base.update(train)
    return {"model": {"num_classes": 1}, "train": base}


def trainer(tmp_path, loader, evaluate=None, model=None, **train) -> Trainer:
    return Trainer(
        model=model or ColourBox(), train_loader=loader,
        evaluate=evaluate or (lambda m: {"bbox": {"AP": 0.5}}), out_dir=tmp_path, config=config(**train),
        class_names=["box"], progress=False,
    )


def log(path) -> list[dict]:
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "train"]


def test_accumulating_two_half_batches_equals_one_full_batch(tmp_path):
    data = items(16)
    full = trainer(tmp_path / "full", batches(data, 4))
    full.train()
    half = trainer(tmp_path / "half", batches(data, 2), accumulate=2)
    half.train()
    assert half.iteration == full.iteration == 8  # 4 steps an epoch either way
    for a, b in zip(full.model.parameters(), half.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert [r["loss"] for r in log(tmp_path / "full")] == pytest.approx([r["loss"] for r in log(tmp_path / "half")])


def test_accumulate_larger_than_an_epoch_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.accumulate"):
        trainer(tmp_path, batches(items(4), 2), accumulate=3)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step")
def test_ema_follows_the_formula_and_is_what_is_evaluated_and_saved(tmp_path):
    evaluated = []
    t = trainer(tmp_path, batches(items(8), 2), evaluate=lambda m: evaluated.append(m) or {"bbox": {"AP": 0.1}},
                epochs=1)
    t.config["train"]["ema"] = {"decay": 0.5, "tau": 0}
    t.ema = ModelEMA.from_config(t.model, t.config["train"]["ema"])
    expected = {k: v.clone() for k, v in t.model.state_dict().items()}
    original_step = t.optimizer.step

    def step_and_average(*args, **kwargs):
        out = original_step(*args, **kwargs)
        for k, v in t.model.state_dict().items():
            expected[k] = 0.5 * expected[k] + 0.5 * v
        return out

    t.optimizer.step = step_and_average  # type: ignore[method-assign]
    t.train()
    for k, v in t.ema.module.state_dict().items():
        torch.testing.assert_close(v, expected[k], atol=1e-6, rtol=0)
    assert evaluated == [t.ema.module]
    last = load_checkpoint(tmp_path / "last.pt")
    for k, v in t.ema.module.state_dict().items():
        assert torch.equal(last["model"][k], v)
        assert torch.equal(last["train_state"]["model"][k], t.model.state_dict()[k])
    assert not torch.equal(last["model"]["linear.weight"], last["train_state"]["model"]["linear.weight"])


def test_ema_ramp_and_settings():
    ema = ModelEMA(nn.Linear(2, 2), decay=0.9998, tau=2000)
    ema.updates = 2000
    assert ema.current_decay() == pytest.approx(0.9998 * (1 - math.exp(-1)))
    with pytest.raises(ConfigError, match=r"train\.ema\.decay"):
        ModelEMA.from_config(nn.Linear(2, 2), {"decay": 1.5})
    assert ModelEMA.from_config(nn.Linear(2, 2), None) is None


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_learns_like_fp32(tmp_path, precision):
    data = batches(items(16), 4)
    fp32 = trainer(tmp_path / "fp32", data, epochs=3)
    fp32.train()
    fast = _cpu_has("amx_tile") if precision == "bf16" else _cpu_has("amx_fp16")
    # a CPU without AMX (or AMX-FP16) runs the precision slower than fp32 and says so
    expect_warning = contextlib.nullcontext() if fast else pytest.warns(UserWarning, match="slower than fp32")
    with expect_warning:
        mixed = trainer(tmp_path / precision, data, epochs=3, precision=precision)
    mixed.train()
    first, last = log(tmp_path / precision)[0]["loss"], log(tmp_path / precision)[-1]["loss"]
    assert last < 0.5 * first
    assert log(tmp_path / "fp32")[-1]["loss"] == pytest.approx(last, rel=0.1, abs=0.01)
    assert (mixed.scaler is not None) == (precision == "fp16")
    assert load_checkpoint(tmp_path / precision / "last.pt")["meta"]["precision"] == precision


def test_unknown_precision_names_its_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.precision"):
        trainer(tmp_path, batches(items(4), 2), precision="fp8")


def test_periodic_checkpoints_keep_the_last_k(tmp_path):
    t = trainer(tmp_path, batches(items(16), 2), epochs=2, checkpoint_period=3, keep_checkpoints=2)
    t.train()
    assert sorted(p.name for p in tmp_path.glob("iter_*.pt")) == ["iter_0000012.pt", "iter_0000015.pt"]
    assert load_checkpoint(tmp_path / "iter_0000012.pt")["train_state"]["iteration"] == 12


def test_max_iters_runs_past_the_epoch_count(tmp_path):
    t = trainer(tmp_path, batches(items(8), 2), epochs=1, max_iters=10)
    assert t.train().iterations == 10 and t.epoch == 3


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        trainer(tmp_path, batches(items(4), 2), epochs=1).train()
    finally:
        os.umask(old)
    for name in ("last.pt", "best.pt", "metrics.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
