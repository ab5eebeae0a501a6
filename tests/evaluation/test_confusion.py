"""The confusion matrix and the precision-recall curves of an evaluation.

Oracles: hand-built images where every cell of the matrix is known (a correct
detection, a confusion, a missed object, a detection of nothing, one on a crowd
region, one below the score threshold, two detections of one object); for the curves,
the per-class AP that COCOeval reports is the mean of the curve the evaluator keeps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from detkit.data.base import coco_from_dict
from detkit.evaluation.coco import CocoEvaluator
from detkit.evaluation.confusion import confusion_matrix

CLASSES = ("cat", "dog")
CATEGORY_IDS = (3, 7)  # not 0..K-1, so label indices and category ids cannot be mixed up


def _gt() -> Any:
    def ann(i: int, image: int, cat: int, box: list[float], crowd: int = 0) -> dict[str, Any]:
        return {"id": i, "image_id": image, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": crowd}

    return coco_from_dict({
        "images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200},
                   {"id": 3, "width": 200, "height": 200}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [
            ann(1, 1, 3, [10, 10, 50, 50]),  # cat, found as a cat
            ann(2, 1, 7, [100, 100, 60, 60]),  # dog, found as a cat (confusion)
            ann(3, 1, 7, [10, 120, 40, 40]),  # dog, missed
            ann(4, 2, 3, [50, 50, 80, 80]),  # cat, found twice as a cat
            ann(5, 2, 3, [0, 150, 200, 50], crowd=1),  # a crowd of cats
            ann(6, 3, 7, [20, 20, 100, 100]),  # a dog in an image left out of the matrix
        ],
    })  # fmt: skip


def _det(image: int, cat: int, box: list[float], score: float) -> dict[str, Any]:
    return {"image_id": image, "category_id": cat, "bbox": box, "score": score}


RECORDS = [
    _det(1, 3, [11, 10, 50, 50], 0.9),  # cat -> cat
    _det(1, 3, [102, 100, 60, 60], 0.8),  # dog -> cat
    _det(1, 7, [150, 10, 30, 30], 0.7),  # background -> dog
    _det(1, 7, [10, 120, 40, 40], 0.2),  # below the threshold: the dog stays missed
    _det(2, 3, [50, 50, 80, 80], 0.95),  # cat -> cat
    _det(2, 3, [52, 50, 80, 80], 0.6),  # a second detection of the same cat: background -> cat
    _det(2, 3, [20, 160, 40, 30], 0.85),  # a cat inside the crowd of cats: not counted
    _det(3, 7, [20, 20, 100, 100], 0.9),  # image 3 is not matched
]


def test_every_cell_is_known() -> None:
    result = confusion_matrix(
        _gt(), RECORDS, class_names=CLASSES, category_ids=CATEGORY_IDS, image_ids=[1, 2], score_thresh=0.5
    )
    #                     predicted: cat dog background
    expected = np.array([[2, 0, 0],  # true cat
                         [1, 0, 1],  # true dog
                         [1, 1, 0]])  # background  # fmt: skip
    np.testing.assert_array_equal(result.matrix, expected)
    assert result.labels == ["cat", "dog", "background"]
    assert result.images == 2
    assert result.top_confusions(2) == [("dog", "cat", 1), ("dog", "background", 1)]
    as_dict = result.to_dict()
    assert as_dict["matrix"] == expected.tolist() and as_dict["score_thresh"] == 0.5


def test_rows_sum_to_the_objects_and_columns_to_the_counted_detections() -> None:
    gt = _gt()
    result = confusion_matrix(gt, RECORDS, class_names=CLASSES, category_ids=CATEGORY_IDS, score_thresh=0.0)
    objects = [sum(1 for a in gt.dataset["annotations"] if a["category_id"] == c and not a["iscrowd"])
               for c in CATEGORY_IDS]  # fmt: skip
    np.testing.assert_array_equal(result.matrix[:2].sum(axis=1), objects)
    counted = [sum(1 for r in RECORDS if r["category_id"] == c) for c in CATEGORY_IDS]
    counted[0] -= 1  # the cat inside the crowd region
    np.testing.assert_array_equal(result.matrix[:, :2].sum(axis=0), counted)
    # at score 0 the low-scoring dog detection finds the missed dog
    assert result.matrix[1, 1] == 2 and result.matrix[1, 2] == 0


def test_own_class_is_preferred_over_a_better_overlap_of_another() -> None:
    gt = coco_from_dict({
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [14, 10, 40, 40], "area": 1600, "iscrowd": 0},
        ],
    })  # fmt: skip
    result = confusion_matrix(gt, [_det(1, 3, [10, 10, 40, 40], 0.9)], class_names=CLASSES, category_ids=CATEGORY_IDS)
    np.testing.assert_array_equal(result.matrix, [[1, 0, 0], [0, 0, 1], [0, 0, 0]])


def test_no_detections_misses_everything() -> None:
    result = confusion_matrix(_gt(), [], class_names=CLASSES, category_ids=CATEGORY_IDS)
    np.testing.assert_array_equal(result.matrix, [[0, 0, 2], [0, 0, 3], [0, 0, 0]])
    assert result.top_confusions() == [("dog", "background", 3), ("cat", "background", 2)]


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_curves_average_to_the_per_class_ap(backend: str) -> None:
    evaluator = CocoEvaluator(_gt(), class_names=CLASSES, category_ids=CATEGORY_IDS, backend=backend)
    evaluator.add_results(RECORDS)
    metrics = evaluator.evaluate()
    curves = evaluator.curves["bbox"]
    assert curves.class_names == CLASSES and curves.areas == ("all", "small", "medium", "large")
    assert curves.precision.shape == (10, 101, 2, 4)
    mean = curves.at(None)  # (R, K) averaged over the IoU thresholds
    for k, name in enumerate(CLASSES):
        assert mean[:, k].mean() == pytest.approx(metrics["bbox"]["per_class"][name], abs=1e-12)
    # IoU 0.5, by hand. Cats (2 objects): the two best of 5 detections find both (the
    # one on the crowd is ignored), so precision is 1 at every recall. Dogs (3 objects):
    # TP (recall 1/3, precision 1), FP, TP (2/3, 2/3): interpolated precision 1 at the 34
    # recall points 0..0.33, 2/3 at the 33 points 0.34..0.66, 0 beyond.
    np.testing.assert_allclose(curves.at(0.5)[:, 0], 1.0)
    assert curves.at(0.5)[:, 1].mean() == pytest.approx((34 + 33 * 2 / 3) / 101, abs=1e-12)
    evaluator.reset()
    assert evaluator.curves == {}
