"""Greedy non-maximum suppression of many boxes of which few overlap much.

Selective search demotes near-duplicates (IoU above 0.7 with a better-ranked box)
among a few thousand boxes. Greedy NMS compares each kept box with every later
one; here the pairs that can overlap that much are found first, and the greedy
pass only walks them.

Candidate pairs: if ``IoU(i, j) > t`` then the widths (and the heights) of the
two boxes are within a factor ``t`` of each other, and every coordinate of one
is closer than ``(1 - t) * S`` to the same coordinate of the other, ``S`` the
longer side of the larger box. Boxes are put in size classes (longest side
between ``b**c`` and ``b**(c + 1)`` with ``b = 1 / t``), so an overlapping pair is
in one class or in two neighbouring ones; a k-d tree over the corners
``(x0, y0, x1, y1)`` of the boxes of classes ``c`` and ``c + 1`` lists the pairs
within that distance (Chebyshev). The IoU of the candidates is then computed as
torchvision's ``nms`` does (float32, ``inter / (area_i + area_j - inter)``,
compared in float64), so the kept boxes are the same.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from detkit.ops import nms

#: Thresholds below this run :func:`detkit.ops.nms` (the candidate pairs would be most pairs).
SPARSE_MIN_IOU = 0.5
_SLACK = 1e-3  # the bounds use t - _SLACK, and one more pixel of distance, against rounding


def greedy_nms_keep(boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """``(N,)`` bool: the boxes kept by greedy NMS at ``iou_threshold``, ``boxes (N, 4)`` xyxy best first.

    A box is dropped when its IoU with a better-ranked kept box exceeds the
    threshold, as in :func:`detkit.ops.nms` with scores decreasing along the rows
    (which runs instead below :data:`SPARSE_MIN_IOU` or with a box of no width or height).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = np.ones(len(boxes), dtype=bool)
    if len(boxes) < 2:
        return keep
    if not _sparse_applies(boxes, iou_threshold):
        ranked = torch.from_numpy(boxes.astype(np.float32))
        scores = torch.arange(len(boxes), 0, -1, dtype=torch.float32)  # rank order as the score
        keep[:] = False
        keep[nms(ranked, scores, float(iou_threshold)).numpy()] = True
        return keep
    i, j = overlapping_pairs(boxes, iou_threshold).T
    suppressed = bytearray(len(boxes))
    # pairs sorted by the better-ranked box: walk them in rank order
    order = np.lexsort((j, i))
    i, j = i[order].tolist(), j[order].tolist()
    for first, second in zip(i, j):
        if not suppressed[first]:
            suppressed[second] = 1
    keep[np.frombuffer(bytes(suppressed), dtype=np.uint8).astype(bool)] = False
    return keep


def overlapping_pairs(boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """``(P, 2)`` int64 pairs ``i < j`` of rows of ``boxes (N, 4)`` whose IoU exceeds ``iou_threshold``.

    The IoU is torchvision's ``nms`` one (float32). Needs ``iou_threshold >=``
    :data:`SPARSE_MIN_IOU` and boxes of positive width and height.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not _sparse_applies(boxes, iou_threshold):
        raise ValueError(f"overlapping_pairs needs IoU >= {SPARSE_MIN_IOU} and boxes of positive width and height")
    if len(boxes) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    candidates = _candidate_pairs(boxes, sides, iou_threshold)
    return candidates[_iou_above(boxes, candidates, iou_threshold)]


def _sparse_applies(boxes: np.ndarray, iou_threshold: float) -> bool:
    """Whether the candidate pairs of :func:`overlapping_pairs` can be found for these boxes."""
    positive = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    return bool(positive) and SPARSE_MIN_IOU <= iou_threshold < 1.0


def _candidate_pairs(boxes: np.ndarray, sides: np.ndarray, iou_threshold: float) -> np.ndarray:
    """``(P, 2)`` pairs ``i < j`` that include every pair with IoU above ``iou_threshold`` (> 0)."""
    loose = iou_threshold - _SLACK
    classes = np.floor(np.log(sides) / np.log(1.0 / loose)).astype(np.int64)
    found = []
    for c in np.unique(classes).tolist():
        members = np.flatnonzero((classes == c) | (classes == c + 1))
        if len(members) < 2:
            continue
        radius = (1.0 - loose) * float(sides[members].max()) + 1.0
        pairs = cKDTree(boxes[members]).query_pairs(radius, p=np.inf, output_type="ndarray")
        pairs = members[pairs.reshape(-1, 2)]
        # pairs of two class c + 1 boxes come with class c + 1
        found.append(pairs[(classes[pairs[:, 0]] == c) | (classes[pairs[:, 1]] == c)])
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(found)
    return np.sort(pairs, axis=1).astype(np.int64)


def _iou_above(boxes: np.ndarray, pairs: np.ndarray, iou_threshold: float) -> np.ndarray:
    """``(P,)`` bool: whether the IoU of each pair exceeds the threshold, in torchvision's float32 steps."""
    b = boxes.astype(np.float32)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    i, j = pairs[:, 0], pairs[:, 1]
    zero = np.float32(0)
    w = np.maximum(zero, np.minimum(b[i, 2], b[j, 2]) - np.maximum(b[i, 0], b[j, 0]))
    h = np.maximum(zero, np.minimum(b[i, 3], b[j, 3]) - np.maximum(b[i, 1], b[j, 1]))
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area[i] + area[j] - inter)
    return iou.astype(np.float64) > float(iou_threshold)
