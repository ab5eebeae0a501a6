"""Trainer tests on a tiny fake detector that learns the mean ground-truth box.

Oracles: record counts follow from the iteration arithmetic (ceil(iters / log_period)
train records, one eval record per evaluation), files are compared with what the
evaluate callback returned, checkpoints are checked by loading them back.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from detkit.engine import Trainer, TrainResult, load_checkpoint, load_state
from detkit.errors import ConfigError, DetkitError
from detkit.structures import Detections, Targets

IMAGE_SIZE = 32
GT_BOX = (8.0, 8.0, 24.0, 24.0)


@dataclass
class FakeBatch:
    """The attributes of detkit.data.loader.Batch that the trainer reads."""

    images: list[Tensor]
    targets: list[Targets]
    image_ids: list[int] = field(default_factory=list)
    file_names: list[str] = field(default_factory=list)


def make_batch(n: int = 2, *, start_id: int = 0) -> FakeBatch:
    images = [torch.rand(3, IMAGE_SIZE, IMAGE_SIZE) for _ in range(n)]
    targets = [
        Targets(boxes=torch.tensor([GT_BOX]), labels=torch.tensor([0], dtype=torch.int64))
        for _ in range(n)
    ]
    ids = list(range(start_id, start_id + n))
    return FakeBatch(images, targets, ids, [f"img{i}.png" for i in ids])


def empty_batch() -> FakeBatch:
    return FakeBatch([], [], [], [])


class MeanBoxDetector(nn.Module):
    """Predicts one box per image, a learned box regressed onto the gt boxes.

    Training losses: ``loss_box`` (L1 in units of the image size) and ``loss_cls``
    (BCE of a single objectness logit against 1); both fall under SGD.

    Knobs for the tests: ``nan_at`` (forward calls, 1-based, whose loss is NaN),
    ``nan_grad`` (a finite loss whose gradient is NaN), ``interrupt_at`` (a
    forward call that raises KeyboardInterrupt).
    """

    def __init__(
        self,
        *,
        nan_at: set[int] | None = None,
        nan_grad: bool = False,
        interrupt_at: int | None = None,
    ) -> None:
        super().__init__()
        self.box = nn.Parameter(torch.zeros(4))
        self.logit = nn.Parameter(torch.zeros(1))
        self.norm = nn.LayerNorm(4)  # a norm layer, so param groups are exercised
        self.nan_at = nan_at or set()
        self.nan_grad = nan_grad
        self.interrupt_at = interrupt_at
        self.train_calls = 0
        self.modes: list[tuple[bool, bool]] = []  # (training, grad enabled) per call
        if nan_grad:
            self.box.register_hook(lambda g: g * float("nan"))

    def forward(
        self, images: list[Tensor], targets: list[Targets] | None = None
    ) -> tuple[list[Detections], dict[str, Tensor]]:
        self.modes.append((self.training, torch.is_grad_enabled()))
        box = self.box * IMAGE_SIZE
        if not self.training:
            score = torch.sigmoid(self.logit)
            dets = [
                Detections(
                    boxes=box[None].detach(),
                    scores=score.detach(),
                    labels=torch.zeros(1, dtype=torch.int64),
                )
                for _ in images
            ]
            return dets, {}
        self.train_calls += 1
        if self.interrupt_at == self.train_calls:
            raise KeyboardInterrupt
        assert targets is not None and len(targets) == len(images)
        gt = torch.cat([t.boxes for t in targets]).mean(0) / IMAGE_SIZE
        loss_box = (self.box + 0 * self.norm(self.box) - gt).abs().mean()
        loss_cls = F.binary_cross_entropy_with_logits(self.logit, torch.ones(1))
        if self.train_calls in self.nan_at:
            loss_box = loss_box * float("nan")
        return [], {"loss_box": loss_box, "loss_cls": loss_cls}


def box_iou(a: Tensor, b: Tensor) -> float:
    lt = torch.maximum(a[:2], b[:2])
    rb = torch.minimum(a[2:], b[2:])
    inter = (rb - lt).clamp(min=0).prod()
    area = (a[2:] - a[:2]).clamp(min=0).prod() + (b[2:] - b[:2]).clamp(min=0).prod()
    return float(inter / (area - inter)) if area > 0 else 0.0


class IoUEvaluator:
    """evaluate(model) -> {"bbox": {"AP": IoU of the predicted box with GT_BOX, ...}}."""

    def __init__(self) -> None:
        self.results: list[dict] = []
        self.modes: list[tuple[bool, bool]] = []

    def __call__(self, model: nn.Module) -> dict:
        self.modes.append((model.training, torch.is_grad_enabled()))
        dets, _ = model([torch.rand(3, IMAGE_SIZE, IMAGE_SIZE)])
        iou = box_iou(dets[0].boxes[0], torch.tensor(GT_BOX))
        result = {"bbox": {"AP": iou, "AP50": float(iou >= 0.5)}, "n_calls": len(self.results)}
        self.results.append(result)
        return result


# ----------------------------------------------------------------------------- helpers


def make_config(**train: object) -> dict:
    base = {
        "device": "cpu",
        "epochs": 3,
        "max_iters": None,
        "max_minutes": None,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "schedule": "constant",
        "warmup_iters": 0,
        "warmup_factor": 0.1,
        "clip_grad_norm": 10.0,
        "eval_period": 1,
        "log_period": 5,
    }
    base.update(train)
    return {"model": {"num_classes": 1}, "train": base}


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(
    tmp_path, *, model=None, loader=None, evaluate=None, **train
) -> tuple[TrainResult, Trainer]:
    trainer = Trainer(
        model=model if model is not None else MeanBoxDetector(),
        train_loader=loader if loader is not None else [make_batch() for _ in range(4)],
        evaluate=evaluate if evaluate is not None else IoUEvaluator(),
        out_dir=tmp_path / "run",
        config=make_config(**train),
        class_names=["cell"],
        progress=False,
    )
    return trainer.train(), trainer


class _Dataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[Tensor, Targets]:
        batch = make_batch(1, start_id=i)
        return batch.images[0], batch.targets[0]


def _collate(items: list) -> FakeBatch:
    return FakeBatch(
        [im for im, _ in items], [t for _, t in items], [0] * len(items), [""] * len(items)
    )


# ----------------------------------------------------------------------------- tests


def test_full_run_writes_every_output(tmp_path):
    loader = DataLoader(_Dataset(), batch_size=2, collate_fn=_collate)  # 4 batches an epoch
    evaluator = IoUEvaluator()
    model = MeanBoxDetector()
    result, _ = run(
        tmp_path, model=model, loader=loader, evaluate=evaluator, epochs=3, log_period=5
    )
    out = tmp_path / "run"

    # 12 iterations: train records at 5, 10 and the final 12; evals after epochs 1, 2, 3.
    assert result.iterations == 12
    records = read_jsonl(out / "metrics.jsonl")
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["iter"] for r in train] == [5, 10, 12]
    assert [r["iter"] for r in evals] == [4, 8, 12]
    for r in train:
        assert {"epoch", "lr", "loss", "loss_box", "loss_cls", "seconds"} <= set(r)
        assert r["loss"] == pytest.approx(r["loss_box"] + r["loss_cls"])
    assert [r["metrics"] for r in evals] == evaluator.results
    assert train[-1]["loss"] < train[0]["loss"]  # the fake learns

    # metrics.json is exactly the last callback result; best AP is the max seen.
    assert json.loads((out / "metrics.json").read_text()) == evaluator.results[-1]
    assert result.final_metrics == evaluator.results[-1]
    aps = [m["bbox"]["AP"] for m in evaluator.results]
    assert result.best_ap == max(aps)

    # Evaluation ran in eval mode without grad; steps ran in train mode with grad.
    assert evaluator.modes == [(False, False)] * 3
    assert all(mode == (True, True) for mode in model.modes if mode[0])
    assert model.training

    # Checkpoints load back into a fresh model.
    last = load_checkpoint(out / "last.pt")
    best = load_checkpoint(out / "best.pt")
    assert last["meta"]["iteration"] == 12 and last["class_names"] == ["cell"]
    assert last["config"]["train"]["epochs"] == 3
    assert best["meta"]["metrics"]["bbox"]["AP"] == max(aps)
    fresh = MeanBoxDetector()
    load_state(fresh, last["model"], path=out / "last.pt")
    assert torch.equal(fresh.box, model.box)

    # The loss curve is a real picture, not a blank canvas.
    png = cv2.imread(str(out / "loss_curve.png"))
    assert png is not None and png.std() > 10
    assert (out / "config.yaml").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_max_iters_stops_mid_epoch_and_still_evaluates(tmp_path):
    model = MeanBoxDetector()
    evaluator = IoUEvaluator()
    result, trainer = run(
        tmp_path, model=model, evaluate=evaluator, epochs=10, max_iters=7, log_period=3
    )
    assert trainer.total_iters == 7
    assert result.iterations == 7 and model.train_calls == 7
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["iter"] for r in records if r["type"] == "train"] == [3, 6, 7]
    assert [r["iter"] for r in records if r["type"] == "eval"] == [4, 7]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["meta"]["iteration"] == 7


def test_eval_period_zero_evaluates_once_at_the_end(tmp_path):
    evaluator = IoUEvaluator()
    result, _ = run(tmp_path, evaluate=evaluator, epochs=2, eval_period=0)
    assert len(evaluator.results) == 1 and result.iterations == 8


def test_empty_batches_are_skipped(tmp_path):
    loader = [make_batch(), empty_batch(), make_batch(), empty_batch()]
    model = MeanBoxDetector()
    result, _ = run(tmp_path, model=model, loader=loader, epochs=2)
    assert result.iterations == 4 and model.train_calls == 4


def test_time_budget_ends_training_then_evaluates(tmp_path):
    now = [0.0]

    def clock() -> float:  # a fake clock: each reading advances 10 s
        now[0] += 10.0
        return now[0]

    evaluator = IoUEvaluator()
    trainer = Trainer(
        model=MeanBoxDetector(),
        train_loader=[make_batch() for _ in range(4)],
        evaluate=evaluator,
        out_dir=tmp_path / "run",
        config=make_config(epochs=100, max_minutes=1.0),
        class_names=["cell"],
        progress=False,
        clock=clock,
    )
    result = trainer.train()
    assert result.stopped_early
    assert 0 < result.iterations < 20  # 1 minute of fake time is a handful of steps
    assert len(evaluator.results) >= 1
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert records[-1]["type"] == "eval" and records[-1]["iter"] == result.iterations
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == evaluator.results[-1]


def test_a_nonfinite_loss_is_skipped_with_a_warning(tmp_path, caplog):
    model = MeanBoxDetector(nan_at={2})
    with caplog.at_level(logging.WARNING, logger="detkit.engine.trainer"):
        result, _ = run(tmp_path, model=model, epochs=1, log_period=4)
    assert result.iterations == 4
    assert any("non-finite loss" in r.getMessage() for r in caplog.records)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    train = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["type"] == "train"]
    assert train[0]["nonfinite_steps"] == 1 and math.isfinite(train[0]["loss"])


def test_diverging_loss_aborts_after_a_few_steps_in_a_row(tmp_path):
    model = MeanBoxDetector(nan_at=set(range(1, 100)))
    with pytest.raises(DetkitError, match=r"training diverged.*train\.lr.*train\.warmup_iters"):
        run(tmp_path, model=model, epochs=5)
    assert model.train_calls == 5  # Trainer.max_bad_steps


def test_nonfinite_gradients_are_skipped_too(tmp_path):
    model = MeanBoxDetector(nan_grad=True)
    before = model.box.detach().clone()
    with pytest.raises(DetkitError, match="gradient norm"):
        run(tmp_path, model=model, epochs=5)
    assert torch.equal(model.box.detach(), before)  # no step was taken


def test_ctrl_c_saves_last_checkpoint_and_reraises(tmp_path):
    model = MeanBoxDetector(interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, model=model, epochs=2)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["meta"]["iteration"] == 2
    assert torch.equal(ckpt["model"]["box"], model.box.detach())


def test_lr_follows_the_schedule(tmp_path):
    # warmup over 4 steps from 0.1 * lr; the logged lr is the one after the last step.
    run(
        tmp_path,
        epochs=2,
        schedule="constant",
        warmup_iters=4,
        warmup_factor=0.1,
        log_period=1,
        lr=0.05,
    )
    lrs = [r["lr"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["type"] == "train"]
    expected = [0.05 * (0.1 * (1 - t / 4) + t / 4) if t < 4 else 0.05 for t in range(1, 9)]
    assert lrs == pytest.approx(expected)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("optimizer", "adam"),
        ("schedule", "linear"),
        ("lr", -1.0),
        ("epochs", 0),
        ("log_period", 0),
        ("device", "tpu"),
    ],
)
def test_bad_train_settings_name_their_key(tmp_path, key, value):
    with pytest.raises(ConfigError, match=rf"train\.{key}"):
        run(tmp_path, **{key: value})


def test_a_loader_without_length_needs_max_iters(tmp_path):
    def batches():
        while True:
            yield make_batch()

    class Unsized:
        def __iter__(self):
            return batches()

    with pytest.raises(ConfigError, match=r"train\.max_iters"):
        run(tmp_path, loader=Unsized())
    result, _ = run(tmp_path, loader=Unsized(), max_iters=3)
    assert result.iterations == 3


def test_an_empty_loader_is_an_error(tmp_path):
    with pytest.raises(DetkitError, match="empty"):
        run(tmp_path, loader=[])


def test_numpy_metrics_like_pycocotools_are_stored(tmp_path):
    def evaluate(model: nn.Module) -> dict:
        return {"bbox": {"AP": np.float64(0.5), "stats": np.arange(3, dtype=np.float32)}}

    result, _ = run(tmp_path, evaluate=evaluate, epochs=1)
    assert result.best_ap == 0.5
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == {"bbox": {"AP": 0.5, "stats": [0.0, 1.0, 2.0]}}
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["meta"]["metrics"] == saved


def test_time_budget_fits_the_cosine_schedule_into_the_budget(tmp_path):
    """With max_minutes the horizon follows the measured pace, so the lr decays to ~0 in time."""
    now = [0.0]

    def clock() -> float:  # every reading advances 1 s: about 0.2 minutes per 6 steps
        now[0] += 1.0
        return now[0]

    trainer = Trainer(
        model=MeanBoxDetector(),
        train_loader=[make_batch() for _ in range(10)],
        evaluate=IoUEvaluator(),
        out_dir=tmp_path / "run",
        config=make_config(epochs=1000, max_minutes=2.0, schedule="cosine", warmup_iters=0, log_period=1),
        class_names=["cell"],
        progress=False,
        clock=clock,
    )
    result = trainer.train()
    assert result.stopped_early and result.iterations < trainer.total_iters / 10
    lrs = [r["lr"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["type"] == "train"]
    base = trainer.settings.lr
    assert lrs[-1] < 0.05 * base  # the decay completed: not cut off at a high lr
    assert max(lrs[len(lrs) // 4 :]) < base  # and it decayed along the way


# ----------------------------------------------------------------------------- transfer-learning controls


class _WithBatchNorm(MeanBoxDetector):
    """The mean-box detector with a batch norm whose running statistics training would move."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)

    def forward(self, images, targets=None):
        if self.training:
            self.bn(torch.randn(8, 4) * 3 + 5)  # a batch far from the statistics' start (0, 1)
        return super().forward(images, targets)


def test_freeze_patterns_stop_those_parameters(tmp_path):
    model = MeanBoxDetector()
    _, trainer = run(tmp_path, model=model, freeze=["logit"], epochs=1)
    assert trainer.frozen == ["logit"]
    assert model.logit.item() == 0.0 and model.box.abs().sum() > 0  # frozen stays, the rest learned
    with pytest.raises(ConfigError, match=r"train.freeze: 'backbone.\*' matches no parameter; parameter names "
                                          r"start with box, logit, norm"):
        run(tmp_path, freeze=["backbone.*"])


def test_param_groups_scale_the_learning_rate_of_matched_parameters(tmp_path):
    _, trainer = run(tmp_path, param_groups=[{"match": "box", "lr_mult": 0.1}], epochs=1, lr=0.05)
    lrs = sorted(group["lr"] for group in trainer.optimizer.param_groups)
    assert lrs == pytest.approx([0.005, 0.05, 0.05])  # box alone at 0.1 x; logit (decayed) and norm at 1 x
    box_group = next(g for g in trainer.optimizer.param_groups if any(p is trainer.model.box for p in g["params"]))
    assert box_group["lr"] == pytest.approx(0.005)
    with pytest.raises(ConfigError, match=r"train.param_groups: 'head.\*' matches no trainable parameter"):
        run(tmp_path, param_groups=[{"match": "head.*", "lr_mult": 0.1}])
    with pytest.raises(ConfigError, match=r"train.param_groups\[0\]: unknown key 'lr'"):
        run(tmp_path, param_groups=[{"match": "box", "lr": 0.1}])


def test_freeze_norm_stats_keeps_running_statistics(tmp_path):
    moving = _WithBatchNorm()
    run(tmp_path / "a", model=moving, epochs=1)
    assert moving.bn.running_mean.abs().sum() > 1  # trained: the statistics moved towards 5
    kept = _WithBatchNorm()
    run(tmp_path / "b", model=kept, epochs=1, freeze_norm_stats=True)
    assert torch.equal(kept.bn.running_mean, torch.zeros(4)) and torch.equal(kept.bn.running_var, torch.ones(4))
