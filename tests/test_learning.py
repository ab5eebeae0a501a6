"""Every detector family learns: each overfits a few synthetic shapes images.

A smoke test shows that a detector runs; these tests show that it *learns*. Each
shipped shapes recipe (two-stage Faster and Mask R-CNN, SSD, the YOLO-style grid,
OverFeat sliding windows, R-CNN with its SVMs) is trained through ``detkit train``'s
own path (:func:`detkit.engine.run.run_training`: the config, the loader, the
:class:`~detkit.engine.Trainer`, R-CNN's ``finish_training``) on four generated
shapes images (R-CNN: eight), then scored by the COCO evaluation (pycocotools) on
those same images. The oracle is the ground truth itself:

* the untrained model (same recipe, same seed, same initial weights) scores an AP50
  near 0 (R-CNN about 0.1: its proposals are not learned), so a pipeline that
  ignores its weights, or an evaluation that matches anything, cannot pass;
* after a bounded number of steps the AP50 is far above that, so a broken loss,
  a target assignment that never matches, a box coder that decodes the wrong way,
  a head whose gradients do not flow or an optimizer that does not step, fails;
* R-CNN is also scored just before its SVMs are fitted, so that the fine-tuning
  has to learn too (SVMs on an untrained CNN's features memorize 8 images fairly well).

Memorizing a few images says nothing about generalization (README has the held-out
figures); it is the cheapest test that the loss, the target assignment, the
decoding and the post-processing agree with one another. The step counts and
thresholds come from runs over several training seeds (figures beside each case);
the recipes are shrunk only where they would not fit the time budget.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from detkit.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SEED = 0


@dataclass(frozen=True)
class Case:
    """One family: its recipe, what is changed for a tiny run, its steps and AP50 bounds."""

    recipe: str
    steps: int
    min_ap50: dict[str, float]  # iou type ("bbox", "segm") -> AP50 the trained model reaches
    overrides: tuple[str, ...] = ()
    images: int = 4  # the generator's first 4 training images hold 17 objects, 8 hold 33
    untrained_max_ap50: float = 0.05
    # R-CNN fits its SVMs and box regressors after the steps (``finish_training``); the
    # fine-tuned CNN alone (softmax scores) is evaluated one step earlier and must reach this
    min_ap50_before_fit: float | None = None


# Figures: AP50 after training (untrained) for train.seed 0 / 1 / 2, and the CPU seconds of
# one test (one thread). With lr 1e-9 or 1 step every case fails.
CASES = [
    pytest.param(
        # 1.00 / 1.00 / 0.95 (0.000 / 0.006 / 0.000); 100 steps: 0.96 / 0.90 / 0.83; 27 s
        Case("shapes_faster_rcnn.yaml", steps=150, min_ap50={"bbox": 0.8}),
        id="faster_rcnn",
    ),
    pytest.param(
        # box 0.98 / 0.99 / 1.00, mask 0.72 / 0.92 / 0.92 (0.00 / 0.004 / 0.00, masks 0.00); 30 s
        Case("shapes_mask_rcnn.yaml", steps=100, min_ap50={"bbox": 0.8, "segm": 0.5}),
        id="mask_rcnn",
    ),
    pytest.param(
        # 1.00 / 1.00 / 1.00 (0.00); 300 steps: 0.94 / 0.88 / 0.95; 40 s.
        # The VGG trunk (no batch norm) at width 8 instead of 16: a quarter of the cost.
        Case("shapes_ssd.yaml", steps=400, min_ap50={"bbox": 0.8}, overrides=("model.backbone.width=8",)),
        id="ssd",
    ),
    pytest.param(
        # 0.94 / 0.94 / 0.94 (0.00), as at 200 steps; 13 s
        Case("shapes_yolo_grid.yaml", steps=150, min_ap50={"bbox": 0.8}),
        id="yolo_grid",
    ),
    pytest.param(
        # 0.86 / 0.75 / 0.71 (0.00 / 0.00 / 0.001); 400 steps: 0.77 / 0.64 / 0.54; 22 s.
        # Windows on a fixed grid regress every box from the wrong shape: the weakest localizer.
        Case("shapes_sliding_window.yaml", steps=600, min_ap50={"bbox": 0.5}),
        id="sliding_window",
    ),
    pytest.param(
        # 0.77 / 0.80 / 0.74, seed 3 0.77 (0.07 / 0.11 / 0.08 / 0.07); the fine-tuned CNN alone
        # after 99 steps 0.68 / 0.55 / 0.51 / 0.57; 38 s.
        # Selective search finds 29 of the 33 objects at IoU 0.5, a ceiling, and its proposals
        # cover the objects already, so even an untrained CNN's crop scores reach about 0.1.
        # SVMs and box regressors fitted on an untrained CNN (train.lr=1e-9) reach 0.62-0.65
        # over the seeds but its softmax 0.14 (seed 0): the softmax evaluation shows fine-tuning.
        # On 4 images (3-5 SVM positives per class) the seeds spread over 0.60-0.83.
        # svm_c: on 3-8 positives per class the recipe's 1e-3 regularizes them away (seeds 0 / 1:
        # 0.33 / 0.27 after the SVMs, below the softmax's 0.68 / 0.55).
        Case(
            "shapes_rcnn.yaml",
            steps=100,
            min_ap50={"bbox": 0.6},
            overrides=("model.roi_head.svm_c=0.1", "model.roi_head.batch_size_per_image=16"),
            images=8,
            untrained_max_ap50=0.2,
            min_ap50_before_fit=0.4,
        ),
        id="rcnn",
    ),
]


def tiny_run_overrides(tmp_path: Path, *, images: int, steps: int, seed: int) -> list[str]:
    """Train and evaluate on the same ``images`` generated images, all under ``tmp_path``."""
    data = tmp_path / "data"
    same_images = [f"root={data}", "split=train", f"num_train={images}", "num_val=0"]
    return [
        *(f"data.{split}.{kv}" for split in ("train", "val") for kv in same_images),
        "data.augment.hflip=0",
        "train.device=cpu",
        f"train.seed={seed}",
        "train.threads=1",
        f"train.batch_size={images}",
        f"train.max_iters={steps}",
        f"train.epochs={steps}",  # one batch per epoch
        "train.max_minutes=null",
        "train.warmup_iters=10",
        "train.eval_period=0",  # evaluate once, at the end
        f"eval.batch_size={images}",
        f"output.dir={tmp_path / 'run'}",
    ]


def train_and_score(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """COCO metrics of the untrained and of the trained model on ``data.val``, and the run's log.

    The untrained model is built as ``detkit train`` builds it (same seed); training is
    ``detkit train``'s own function, which evaluates on ``data.val`` at the end.
    """
    from detkit.engine.build import build_dataset, model_from_config, plugins_for
    from detkit.engine.evaluate import evaluate_dataset
    from detkit.engine.run import run_training

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(int(config["train"]["threads"]))
        torch.manual_seed(int(config["train"]["seed"]))
        plugins = plugins_for(config)
        plugins.hook.detkit_configure(config=config)
        val_set = build_dataset(config, "val", plugins)
        untrained = model_from_config(config, plugins, class_names=val_set.class_names)
        before = evaluate_dataset(untrained, val_set, batch_size=config["eval"]["batch_size"], progress=False)
        after = run_training(copy.deepcopy(config), [], progress=False)
    finally:
        torch.set_num_threads(threads)  # train.threads applies process-wide
    log = Path(config["output"]["dir"]) / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return before, after, records


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_detector_overfits_a_few_shapes_images(case: Case, tmp_path, monkeypatch):
    monkeypatch.setenv("DETKIT_CACHE", str(tmp_path / "cache"))  # selective search's proposal cache
    overrides = [*tiny_run_overrides(tmp_path, images=case.images, steps=case.steps, seed=SEED), *case.overrides]
    if case.min_ap50_before_fit is not None:  # an evaluation after step steps-1 too: before the fit
        overrides.append(f"train.eval_period={case.steps - 1}")
    config = load_config(CONFIGS / case.recipe, overrides)

    before, after, records = train_and_score(config)

    steps = [r["iter"] for r in records if r["type"] == "train"]
    assert steps and max(steps) == case.steps
    if case.min_ap50_before_fit is not None:
        fitted = [r for r in records if r["type"] == "finish_training"]
        assert len(fitted) == 1, records
        before_fit = [r["metrics"]["bbox"] for r in records if r["type"] == "eval" and r["iter"] < case.steps]
        assert before_fit and before_fit[-1]["AP50"] >= case.min_ap50_before_fit, before_fit
    for iou_type, floor in case.min_ap50.items():
        assert before[iou_type]["AP50"] < case.untrained_max_ap50, (iou_type, before[iou_type])
        assert after[iou_type]["AP50"] >= floor, (iou_type, after[iou_type])
