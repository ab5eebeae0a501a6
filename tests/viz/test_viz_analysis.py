"""The pictures of an error analysis: what is drawn where, and that the plots are valid PNGs.

Oracle for the gallery drawing: pixel colours at hand-placed boxes (a correct
detection is green, each error type its own colour, ground truth white with a cyan rim
when missed); the image above the legend is the input where nothing was drawn.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detkit.data.base import coco_from_dict
from detkit.evaluation.coco import CocoEvaluator
from detkit.evaluation.confusion import confusion_matrix
from detkit.viz.analysis import (
    ERROR_COLORS,
    GROUND_TRUTH_COLOR,
    MISSED_RIM,
    draw_errors,
    plot_confusion_matrix,
    plot_error_bars,
    plot_pr_curves,
)


def _read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert image is not None
    return image


def test_gallery_drawing_styles() -> None:
    image = np.full((600, 600, 3), 90, dtype=np.uint8)
    drawn = draw_errors(
        image,
        gt_boxes=np.array([[100, 100, 200, 200], [350, 350, 450, 450]], dtype=float),
        gt_labels=[0, 1],
        gt_missed=[False, True],
        det_boxes=np.array([[300, 50, 400, 150], [50, 400, 150, 500]], dtype=float),
        det_labels=[0, 1],
        det_scores=[0.9, 0.4],
        det_kinds=["correct", "localization"],
        class_names=["cat", "dog"],
    )
    legend = drawn.shape[0] - 600
    assert legend > 0 and drawn.shape[1] == 600
    body = drawn[legend:]

    def pixel(x: int, y: int) -> tuple[int, ...]:
        return tuple(int(v) for v in body[y, x])

    assert pixel(150, 100) == GROUND_TRUTH_COLOR  # the found object's top edge
    assert pixel(400, 451) == MISSED_RIM or pixel(400, 452) == MISSED_RIM  # the missed one's rim
    assert pixel(300, 100) == ERROR_COLORS["correct"]  # left edge of the correct detection
    assert pixel(50, 450) == ERROR_COLORS["localization"]
    assert pixel(250, 300) == (90, 90, 90)  # nothing drawn in between
    assert (drawn[:legend] == 255).mean() > 0.5  # a light legend strip


def test_gallery_enlarges_small_images() -> None:
    drawn = draw_errors(
        np.zeros((60, 80, 3), dtype=np.uint8), gt_boxes=np.zeros((0, 4)), gt_labels=[], gt_missed=[],
        det_boxes=np.zeros((0, 4)), det_labels=[], det_scores=[], det_kinds=[], class_names=[], min_size=240,
    )  # fmt: skip
    assert drawn.shape[1] == 320 and drawn.shape[0] > 240


def test_plots_are_written(tmp_path: Path) -> None:
    gt = coco_from_dict({
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900,
                         "iscrowd": 0}],
    })  # fmt: skip
    records = [{"image_id": 1, "category_id": 1, "bbox": [11, 10, 30, 30], "score": 0.9},
               {"image_id": 1, "category_id": 2, "bbox": [60, 60, 20, 20], "score": 0.8}]  # fmt: skip
    evaluator = CocoEvaluator(gt, class_names=["a", "b", "c"], category_ids=[1, 2, 3])
    evaluator.add_results(records)
    evaluator.evaluate()
    pr = _read_png(plot_pr_curves(evaluator.curves["bbox"], tmp_path / "pr.png"))
    assert pr.shape[1] > pr.shape[0]  # three panels side by side
    cm = confusion_matrix(gt, records, class_names=["a", "b", "c"], category_ids=[1, 2, 3])
    _read_png(plot_confusion_matrix(cm, tmp_path / "cm.png"))
    bars = {"bbox": {"localization": 0.05, "background": 0.12, "missed": 0.0}}
    _read_png(plot_error_bars(bars, tmp_path / "errors.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png", "errors.png", "pr.png"]  # no temp files left


def test_plot_refuses_an_unwritable_place(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        plot_error_bars({"bbox": {"missed": 0.1}}, blocker / "errors.png")
