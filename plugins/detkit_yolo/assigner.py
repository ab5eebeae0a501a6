"""The task-aligned assigner of TOOD (Feng et al., "TOOD: Task-aligned One-stage Object Detection", ICCV 2021).

Which points of the dense prediction learn which ground truth, decided from the
predictions themselves: a point is a good positive for an object when it both
classifies it well and localizes it well. Following the paper (section 3.2, "Task
alignment learning"), for every ground truth ``g`` and point ``p``:

1. **Alignment metric** ``t = s^alpha * u^beta`` (paper eq. 4), with ``s`` the predicted
   score of ``g``'s class at ``p`` and ``u`` the IoU of ``p``'s predicted box with ``g``;
   ``alpha = 0.5`` and ``beta = 6`` weigh localization far more than the score, as in the
   paper's and YOLOv8's settings.
2. **Candidates**: only points whose centre lies strictly inside ``g`` count; of those,
   the ``topk`` (13 in the paper, 10 in YOLOv8 and here) with the largest ``t`` are
   ``g``'s positives (ties go to the lower point index).
3. **One object per point**: a point that several ground truths selected keeps the one
   its predicted box overlaps most (the paper's rule; ties go to the lower ground-truth
   index). Every other point is background.
4. **Soft targets** (paper eq. 10): a positive's classification target is not 1 but the
   normalized alignment ``t_hat = t * max_u / max_t``, where ``max_t`` and ``max_u`` are
   the largest alignment and the largest IoU over ``g``'s positives: the best-aligned
   point of each object aims at its best IoU, the others lower. The same ``t_hat``
   weighs the box losses of the point (YOLOv8's use).

The IoU here is the plain IoU of the paper (YOLOv8 substitutes CIoU); the scores and
boxes are detached predictions, so the assignment follows the model as it learns.

Everything is vectorized over the batch: ground truths are padded to the image with the
most (``gt_mask`` marks the real ones) and every quantity is an ``(N, G, P)`` tensor.

Shape glossary: N images, G ground truths per image (padded), P points of all levels,
K classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from detkit.ops import paired_box_iou


@dataclass
class Assignment:
    """What each point learns.

    Attributes:
        foreground: ``(N, P)`` bool, the positives.
        gt_index: ``(N, P)`` int64, the padded index of each positive's ground truth (0 for
            background).
        target_labels: ``(N, P)`` int64, the positive's class (0 for background).
        target_boxes: ``(N, P, 4)`` xyxy pixels of the positive's ground truth (that of
            ground truth 0 for background; unused).
        target_scores: ``(N, P, K)`` the classification targets: ``t_hat`` at the
            positive's class, 0 elsewhere and for background.
    """

    foreground: Tensor
    gt_index: Tensor
    target_labels: Tensor
    target_boxes: Tensor
    target_scores: Tensor


def points_inside_boxes(points: Tensor, boxes: Tensor, eps: float = 1e-9) -> Tensor:
    """``(P, 2)`` points ``(x, y)`` and ``(..., G, 4)`` xyxy boxes -> ``(..., G, P)`` bool: strictly inside."""
    # (..., G, 1, 2) against (P, 2) -> (..., G, P, 2) each
    to_top_left = points - boxes[..., None, :2]
    to_bottom_right = boxes[..., None, 2:] - points
    return torch.cat([to_top_left, to_bottom_right], dim=-1).amin(dim=-1) > eps


def task_aligned_assign(
    pred_scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    *,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    eps: float = 1e-9,
) -> Assignment:
    """Assign ground truths to points with TOOD's task alignment (see the module docstring).

    Args:
        pred_scores: ``(N, P, K)`` predicted class probabilities (sigmoid), detached.
        pred_boxes: ``(N, P, 4)`` predicted xyxy boxes in pixels, detached.
        points: ``(P, 2)`` the points' ``(x, y)`` in pixels.
        gt_boxes: ``(N, G, 4)`` xyxy pixels, padded.
        gt_labels: ``(N, G)`` int64 in ``0..K-1``, padded (any valid label).
        gt_mask: ``(N, G)`` bool, the real ground truths.
        topk: candidates per ground truth.
        alpha, beta: exponents of the score and the IoU in the alignment metric.
        eps: keeps the normalization finite when every positive of an object has ``t = 0``.
    """
    num_images, num_points, num_classes = pred_scores.shape
    num_gts = gt_boxes.shape[1]
    device = pred_scores.device
    if num_gts == 0:
        return Assignment(
            foreground=torch.zeros((num_images, num_points), dtype=torch.bool, device=device),
            gt_index=torch.zeros((num_images, num_points), dtype=torch.int64, device=device),
            target_labels=torch.zeros((num_images, num_points), dtype=torch.int64, device=device),
            target_boxes=torch.zeros((num_images, num_points, 4), dtype=pred_boxes.dtype, device=device),
            target_scores=torch.zeros_like(pred_scores),
        )

    inside = points_inside_boxes(points, gt_boxes) & gt_mask[..., None]  # (N, G, P)
    # (N, G, 1, 4) against (N, 1, P, 4) -> (N, G, P)
    iou = paired_box_iou(gt_boxes[:, :, None, :], pred_boxes[:, None, :, :]).clamp(min=0)
    iou = torch.where(inside, iou, torch.zeros_like(iou))
    # the score of each ground truth's class at every point: (N, K, P) gathered at (N, G, P) -> (N, G, P)
    class_index = gt_labels[..., None].expand(num_images, num_gts, num_points)
    score = pred_scores.transpose(1, 2).gather(1, class_index)
    metric = score.pow(alpha) * iou.pow(beta)  # (N, G, P), 0 outside the box
    candidates = _topk_inside(metric, inside, topk)  # (N, G, P)

    # one object per point: among the ground truths that chose it, the one of the highest IoU
    chosen_iou = torch.where(candidates, iou, torch.full_like(iou, -1.0))
    gt_index = chosen_iou.argmax(dim=1)  # (N, G, P) -> (N, P), first maximum on ties
    foreground = candidates.any(dim=1)  # (N, P)
    positive = F.one_hot(gt_index, num_gts).transpose(1, 2).bool() & foreground[:, None, :]  # (N, G, P)
    gt_index = torch.where(foreground, gt_index, torch.zeros_like(gt_index))

    # t_hat = t * (largest IoU of the object's positives) / (largest t of the object's positives)
    positive_metric = torch.where(positive, metric, torch.zeros_like(metric))
    best_metric = positive_metric.amax(dim=2, keepdim=True)  # (N, G, 1)
    best_iou = torch.where(positive, iou, torch.zeros_like(iou)).amax(dim=2, keepdim=True)  # (N, G, 1)
    normalized = (positive_metric * best_iou / (best_metric + eps)).amax(dim=1)  # (N, G, P) -> (N, P)

    target_labels = gt_labels.gather(1, gt_index)  # (N, P)
    target_boxes = gt_boxes.gather(1, gt_index[..., None].expand(num_images, num_points, 4))  # (N, P, 4)
    target_labels = torch.where(foreground, target_labels, torch.zeros_like(target_labels))
    one_hot = F.one_hot(target_labels, num_classes).to(pred_scores.dtype)  # (N, P, K)
    target_scores = one_hot * (normalized * foreground)[..., None].to(pred_scores.dtype)
    return Assignment(foreground, gt_index, target_labels, target_boxes, target_scores)


def _topk_inside(metric: Tensor, inside: Tensor, topk: int) -> Tensor:
    """``(N, G, P)`` -> ``(N, G, P)`` bool: per ground truth, its ``topk`` inside points of largest metric.

    Points outside rank below every inside point; a stable sort sends ties to the lower index.
    """
    ranked = torch.where(inside, metric, torch.full_like(metric, -1.0))
    k = min(topk, metric.shape[-1])
    order = ranked.argsort(dim=-1, descending=True, stable=True)[..., :k]  # (N, G, k) point indices
    chosen = torch.zeros_like(inside).scatter_(-1, order, True)
    return chosen & inside


__all__ = ["Assignment", "points_inside_boxes", "task_aligned_assign"]
