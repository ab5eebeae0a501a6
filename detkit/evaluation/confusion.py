"""A detection confusion matrix with a background row and column.

Object detection has no one-to-one pairing of predictions and objects, so the
matrix first matches them, image by image, at a score and an IoU threshold:

1. Detections scoring below ``score_thresh`` are dropped; the others are taken in
   descending score order.
2. A detection takes the unmatched ground-truth box of **its own class** with the
   highest IoU ``>= iou_thresh``; failing that, the unmatched box of **any class**
   with the highest IoU ``>= iou_thresh`` (a confusion). Cell ``[true, predicted]``
   counts the pair.
3. A detection left without a partner is counted in the **background row**
   ``[K, predicted]`` (it found nothing), unless it lies on a crowd region of its own
   class (IoU computed as COCO does for crowds, the share of the detection inside the
   region, ``>= iou_thresh``), which COCO neither rewards nor punishes: it is not counted.
4. A ground-truth object nobody took is counted in the **background column**
   ``[true, K]`` (it was missed).

Rows are the true classes, columns the predicted ones, both in label order with
background last, so the diagonal holds the correct detections and each row sums to
that class's objects (crowds excluded). The same matching rule is used by most
detection toolkits' confusion plots; unlike COCO AP it depends on ``score_thresh``,
which the result records.

Shape glossary: K classes, D detections of an image, G ground-truth boxes of an image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

__all__ = ["ConfusionMatrix", "confusion_matrix"]


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts of (true class, predicted class) pairs; index K is background.

    Attributes:
        matrix: ``(K + 1, K + 1)`` int64; rows true, columns predicted.
        class_names: the K class names (background is not among them).
        score_thresh: detections below it were not counted.
        iou_thresh: the IoU a pair needed.
        images: how many images were matched.
    """

    matrix: np.ndarray
    class_names: tuple[str, ...]
    score_thresh: float
    iou_thresh: float
    images: int

    @property
    def labels(self) -> list[str]:
        """Row and column names: the classes, then ``"background"``."""
        return [*self.class_names, "background"]

    def top_confusions(self, n: int = 5) -> list[tuple[str, str, int]]:
        """The ``n`` largest off-diagonal cells as ``(true, predicted, count)``, largest first."""
        off = self.matrix.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(-off, axis=None, kind="stable")[:n]
        names = self.labels
        pairs = [np.unravel_index(i, off.shape) for i in order]
        return [(names[r], names[c], int(off[r, c])) for r, c in pairs if off[r, c] > 0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the labels, the matrix as nested lists and the thresholds."""
        return {
            "labels": self.labels,
            "matrix": self.matrix.tolist(),
            "rows": "true class",
            "columns": "predicted class",
            "score_thresh": self.score_thresh,
            "iou_thresh": self.iou_thresh,
            "images": self.images,
        }


def confusion_matrix(
    coco_gt: COCO,
    records: Sequence[dict[str, Any]],
    *,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    image_ids: Iterable[int] | None = None,
    score_thresh: float = 0.5,
    iou_thresh: float = 0.5,
) -> ConfusionMatrix:
    """Match ``records`` (COCO result records with ``bbox``) to ``coco_gt`` and count the pairs.

    Args:
        coco_gt: the ground truth; annotations of categories outside ``category_ids``
            are ignored.
        records: ``{"image_id", "category_id", "score", "bbox": [x, y, w, h]}`` each.
        class_names: name of each label index; ``category_ids`` the ground truth's id of each.
        image_ids: the images to match (default: every ground-truth image); records of
            other images are ignored.
        score_thresh: the lowest score counted.
        iou_thresh: the lowest box IoU of a pair.
    """
    label_of = {int(c): k for k, c in enumerate(category_ids)}
    background = len(category_ids)
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    ids = sorted(coco_gt.imgs) if image_ids is None else sorted({int(i) for i in image_ids})
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["score"] >= score_thresh and int(r["category_id"]) in label_of:
            by_image[int(r["image_id"])].append(r)
    for image_id in ids:
        anns = [a for a in coco_gt.imgToAnns.get(image_id, []) if int(a["category_id"]) in label_of]
        objects = [a for a in anns if not a.get("iscrowd", 0)]
        crowds = [a for a in anns if a.get("iscrowd", 0)]
        dets = sorted(by_image.get(image_id, []), key=lambda r: -float(r["score"]))
        gt_labels = np.array([label_of[int(a["category_id"])] for a in objects], dtype=np.int64)
        det_labels = [label_of[int(r["category_id"])] for r in dets]
        ious = _box_iou([r["bbox"] for r in dets], [a["bbox"] for a in objects], crowd=False)  # (D, G)
        on_crowd = _box_iou([r["bbox"] for r in dets], [a["bbox"] for a in crowds], crowd=True)  # (D, C)
        crowd_labels = np.array([label_of[int(a["category_id"])] for a in crowds], dtype=np.int64)
        taken = np.zeros(len(objects), dtype=bool)
        for d, label in enumerate(det_labels):
            free = (ious[d] >= iou_thresh) & ~taken
            same = free & (gt_labels == label)
            pool = same if same.any() else free
            if pool.any():
                g = int(np.argmax(np.where(pool, ious[d], -1.0)))
                taken[g] = True
                matrix[gt_labels[g], label] += 1
            elif not (on_crowd[d][crowd_labels == label] >= iou_thresh).any():
                matrix[background, label] += 1
        np.add.at(matrix[:, background], gt_labels[~taken], 1)
    return ConfusionMatrix(
        matrix=matrix,
        class_names=tuple(class_names),
        score_thresh=float(score_thresh),
        iou_thresh=float(iou_thresh),
        images=len(ids),
    )


def _box_iou(dets: list[list[float]], gts: list[list[float]], *, crowd: bool) -> np.ndarray:
    """``(D, G)`` IoU of xywh boxes; with ``crowd``, the share of each detection inside the region."""
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    flags = [int(crowd)] * len(gts)
    d = np.asarray(dets, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(gts, dtype=np.float64).reshape(-1, 4)
    return np.asarray(mask_utils.iou(d, g, flags), dtype=np.float64).reshape(len(dets), len(gts))
