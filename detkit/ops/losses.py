"""Detection losses on plain tensors: focal loss for scores, IoU-family losses for boxes.

The box losses take paired ``(..., 4)`` xyxy boxes (a prediction and its target,
shapes broadcast) and compute in float32 for float16/bfloat16/integer boxes (float64
stays float64), returning that dtype, as torchvision does. ``reduction`` is
``"none"`` (one loss per pair), ``"mean"`` or ``"sum"``; the ``"mean"`` of no pairs
is 0, with a graph.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from detkit.ops.boxes import (
    HALF_DTYPES,
    _aspect_ratio_penalty,
    _centre_distance_penalty,
    _float_boxes,
    _overlap_and_enclosure,
    at_least_float32,
)

_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        known = ", ".join(repr(name) for name in _REDUCTIONS)
        raise ValueError(f"unknown reduction {reduction!r}; use one of {known}")


def _reduce_box_loss(loss: Tensor, reduction: str) -> Tensor:
    """``loss`` as is, its mean (0 when empty) or its sum."""
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
    if reduction == "sum":
        return loss.sum()
    return loss


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> Tensor:
    """Focal loss of independent binary classifiers (RetinaNet, Lin et al. 2017).

    ``FL = -alpha_t * (1 - p_t)^gamma * log(p_t)`` with ``p = sigmoid(inputs)``,
    ``p_t = p`` where the target is 1 and ``1 - p`` where it is 0, and
    ``alpha_t = alpha`` or ``1 - alpha`` likewise; ``alpha < 0`` drops the
    ``alpha_t`` weight. Soft targets in ``[0, 1]`` interpolate ``p_t`` and
    ``alpha_t``, with ``-log(p_t)`` read as binary cross-entropy, as in torchvision.

    Args:
        inputs: logits, any shape.
        targets: same shape as ``inputs``, 1 for the positive class, 0 for the negative.
        alpha: weight of the positives (``1 - alpha`` of the negatives), or < 0 for none.
        gamma: focusing exponent; 0 gives (weighted) binary cross-entropy.
        reduction: ``"none"`` (shape of ``inputs``), ``"mean"`` or ``"sum"``. The
            ``"mean"`` of an empty tensor is NaN, as ``torch.mean`` and torchvision give.

    Computed in float32 for float16/bfloat16 logits and returned in their dtype.
    """
    _check_reduction(reduction)
    logits = at_least_float32(inputs)
    targets = targets.to(logits.dtype)
    p = logits.sigmoid()
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss.to(inputs.dtype) if inputs.dtype in HALF_DTYPES else loss


def generalized_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """``1 - GIoU`` of paired boxes: ``(..., 4), (..., 4) -> (...)``, in ``[0, 2]``.

    ``GIoU = I / (U + eps) - (C - U) / (C + eps)`` with ``I``, ``U`` the
    intersection and union and ``C`` the area of the smallest box enclosing both
    (Rezatofighi et al. 2019). Disjoint boxes still get a gradient.
    """
    _check_reduction(reduction)
    boxes1, boxes2 = _float_boxes(boxes1), _float_boxes(boxes2)
    inter, union, enclosing_wh = _overlap_and_enclosure(boxes1, boxes2)
    enclosing = enclosing_wh[..., 0] * enclosing_wh[..., 1]
    giou = inter / (union + eps) - (enclosing - union) / (enclosing + eps)
    return _reduce_box_loss(1 - giou, reduction)


def distance_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """``1 - DIoU`` of paired boxes: ``(..., 4), (..., 4) -> (...)``, in ``[0, 2)``.

    ``DIoU = I / (U + eps) - rho^2 / (c^2 + eps)`` with ``rho`` the distance
    between the centres and ``c`` the diagonal of the smallest enclosing box
    (Zheng et al. 2020): the penalty pulls the centres together directly.
    """
    _check_reduction(reduction)
    boxes1, boxes2 = _float_boxes(boxes1), _float_boxes(boxes2)
    inter, union, enclosing_wh = _overlap_and_enclosure(boxes1, boxes2)
    diou = inter / (union + eps) - _centre_distance_penalty(boxes1, boxes2, enclosing_wh, eps)
    return _reduce_box_loss(1 - diou, reduction)


def complete_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """``1 - CIoU`` of paired boxes: ``(..., 4), (..., 4) -> (...)``.

    ``CIoU = DIoU - alpha * v`` (Zheng et al. 2020; see :func:`distance_box_iou_loss`)
    with ``v = 4 / pi^2 * (atan(w1 / h1) - atan(w2 / h2))^2`` the aspect-ratio
    inconsistency and ``alpha = v / (1 - IoU + v + eps)`` its weight, which is not
    differentiated (as in the paper's code and torchvision). ``atan(w / h)`` is
    ``atan2(w, h)``: equal for ``h > 0``, finite for zero-height boxes.
    """
    _check_reduction(reduction)
    boxes1, boxes2 = _float_boxes(boxes1), _float_boxes(boxes2)
    inter, union, enclosing_wh = _overlap_and_enclosure(boxes1, boxes2)
    iou = inter / (union + eps)
    diou = iou - _centre_distance_penalty(boxes1, boxes2, enclosing_wh, eps)
    ciou = diou - _aspect_ratio_penalty(boxes1, boxes2, iou, eps)
    return _reduce_box_loss(1 - ciou, reduction)
