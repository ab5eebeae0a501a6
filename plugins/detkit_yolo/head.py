"""YOLOv8's anchor-free dense head (registered as dense head ``yolo``).

Every cell of every level is one *point* at the cell's centre, ``((col + 0.5) s,
(row + 0.5) s)`` for stride ``s``; there are no anchors and no objectness. Per level,
two decoupled branches (two 3x3 Conv-BN-SiLU layers and a 1x1 predictor each, as in
YOLOX and YOLOv8) predict:

* **classes**: K logits per point; a score is ``sigmoid(logit)``, trained as a
  binary cross-entropy against the soft task-aligned targets (below);
* **box**: the distances from the point to the box's left, top, right and bottom sides,
  each as a *distribution* over ``reg_max`` bins ``0, 1, ..., reg_max - 1`` (in strides):
  the General Distribution of GFL (Li et al., "Generalized Focal Loss", NeurIPS 2020). A
  distance is the distribution's expectation ``sum_i i * softmax(logits)_i`` times the
  stride (:func:`dfl_decode`), so distances reach ``(reg_max - 1) * s``.

Training (:meth:`YoloHead._losses`): the task-aligned assigner of TOOD
(:func:`~detkit_yolo.assigner.task_aligned_assign`) picks the positives and their soft
class targets ``t_hat`` from the detached predictions. Then, with ``S`` the sum of all
targets ``t_hat`` over the batch (at least 1):

* ``loss_yolo_cls = cls_gain * sum BCE(logits, targets) / S`` over every point and class
  (background points have target 0, so they learn low scores);
* ``loss_yolo_box = box_gain * sum_pos t_hat * (1 - CIoU(pred, gt)) / S`` (Zheng et al.,
  2020; :func:`detkit.ops.complete_box_iou_loss`);
* ``loss_yolo_dfl = dfl_gain * sum_pos t_hat * DFL / S``, the Distribution Focal Loss
  (:func:`distribution_focal_loss`): a target distance ``y`` between bins ``i`` and
  ``i + 1`` puts weights ``i + 1 - y`` and ``y - i`` on those two bins' cross-entropies,
  which pulls the distribution's mass onto the two bins around ``y``; averaged over the
  four sides.

The gains default to YOLOv8's (box 7.5, cls 0.5, dfl 1.5). The class logits' biases
start at ``log(prior_objects / K / (prior_image_size / s)^2)``: the chance that a point of
stride ``s`` holds a given class when an image of ``prior_image_size`` pixels holds
``prior_objects`` objects (YOLOv8: 5 objects on 640 pixels); the box logits start at 1.

Inference: ``sigmoid`` scores, the ``topk_candidates`` best (point, class) pairs of an
image as raw :class:`~detkit.structures.Detections` (boxes clipped to the image); the
score threshold and class-wise NMS are the post-processing's.

Shape glossary: N images, K classes, L levels, Hl/Wl level l's size, P = sum over levels
of Hl * Wl points of an image (level-major, then row, column), R = ``reg_max`` bins,
G ground truths per image (padded), F positives of the batch, D raw detections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.ops import clip_boxes, complete_box_iou_loss
from detkit.stages import ClassRows, DenseHead, Losses, no_detections
from detkit.structures import Detections, FeatureMaps, ImageBatch, Targets
from detkit_yolo.assigner import task_aligned_assign
from detkit_yolo.layers import ConvNormAct


def dfl_decode(pred_dist: Tensor) -> Tensor:
    """``(..., R)`` bin logits -> ``(...)`` the expected bin, ``sum_i i * softmax(logits)_i``."""
    bins = torch.arange(pred_dist.shape[-1], dtype=pred_dist.dtype, device=pred_dist.device)
    return pred_dist.softmax(dim=-1) @ bins  # (..., R) @ (R,) -> (...)


def distribution_focal_loss(pred_dist: Tensor, target: Tensor) -> Tensor:
    """GFL's Distribution Focal Loss: ``(..., R)`` bin logits and ``(...)`` targets -> ``(...)``.

    ``DFL = -((i + 1 - y) log p_i + (y - i) log p_(i+1))`` with ``i = floor(y)`` and ``p`` the
    softmax over the bins. ``target`` must lie in ``[0, R - 1)``.
    """
    log_probs = pred_dist.log_softmax(dim=-1)
    left = target.floor().long().clamp(0, pred_dist.shape[-1] - 2)
    weight_left = (left + 1).to(target.dtype) - target
    log_left = log_probs.gather(-1, left[..., None])[..., 0]
    log_right = log_probs.gather(-1, left[..., None] + 1)[..., 0]
    return -(log_left * weight_left + log_right * (1 - weight_left))


def make_points(
    grid_sizes: Sequence[tuple[int, int]], strides: Sequence[int], *, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """The points of every level: centres ``(P, 2)`` ``(x, y)`` in pixels and their strides ``(P,)``.

    Level-major, then row, then column: the order of the head's predictions.
    """
    centres, point_strides = [], []
    for (height, width), stride in zip(grid_sizes, strides):
        rows, cols = torch.meshgrid(
            torch.arange(height, device=device, dtype=dtype),
            torch.arange(width, device=device, dtype=dtype),
            indexing="ij",
        )
        centres.append((torch.stack([cols, rows], dim=-1).reshape(-1, 2) + 0.5) * stride)  # (Hl, Wl, 2) -> (Hl*Wl, 2)
        point_strides.append(torch.full((height * width,), float(stride), device=device, dtype=dtype))
    return torch.cat(centres), torch.cat(point_strides)


def distances_to_boxes(distances: Tensor, points: Tensor, point_strides: Tensor) -> Tensor:
    """``(..., P, 4)`` ``(left, top, right, bottom)`` in strides -> ``(..., P, 4)`` xyxy pixels."""
    scaled = distances * point_strides[:, None]
    return torch.cat([points - scaled[..., :2], points + scaled[..., 2:]], dim=-1)


def boxes_to_distances(boxes: Tensor, points: Tensor, point_strides: Tensor) -> Tensor:
    """``(..., P, 4)`` xyxy pixels -> ``(..., P, 4)`` ``(left, top, right, bottom)`` in strides."""
    return torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1) / point_strides[:, None]


def pad_targets(targets: Sequence[Targets], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Ground truths (crowd regions left out) padded to the image with the most.

    Returns:
        ``boxes (N, G, 4)``, ``labels (N, G)`` and ``mask (N, G)`` (the real ones), G >= 0.
    """
    kept = [t.without_crowd().to(device) for t in targets]
    num_gts = max((len(t) for t in kept), default=0)
    boxes = torch.zeros((len(kept), num_gts, 4), device=device)
    labels = torch.zeros((len(kept), num_gts), dtype=torch.int64, device=device)
    mask = torch.zeros((len(kept), num_gts), dtype=torch.bool, device=device)
    for i, t in enumerate(kept):
        boxes[i, : len(t)] = t.boxes
        labels[i, : len(t)] = t.labels
        mask[i, : len(t)] = True
    return boxes, labels, mask


class YoloHead(DenseHead):
    """YOLOv8's decoupled anchor-free head with DFL boxes and task-aligned assignment.

    ``forward(images, features, targets=None) -> (list[Detections], losses)``: at inference,
    per image the ``topk_candidates`` best (point, class) pairs, scored by the class
    sigmoid; in training, empty detections and ``loss_yolo_cls``, ``loss_yolo_box``,
    ``loss_yolo_dfl`` (see the module docstring).

    Args:
        in_channels: channels of every feature map, finest first (passed by detkit).
        in_strides: their strides (passed by detkit).
        num_classes: K (passed by detkit).
        reg_max: bins of each side's distance distribution; distances reach
            ``reg_max - 1`` strides.
        box_channels: width of the box branch; ``None``: YOLOv8's
            ``max(16, in_channels[0] / 4, 4 * reg_max)``.
        cls_channels: width of the class branch; ``None``: ``in_channels[0]`` (YOLOv8 uses
            ``max(in_channels[0], min(K, 100))``; here it does not depend on K, so that
            fine-tuning to another class list keeps every layer but the classifier).
        norm: ``bn`` or ``frozen_bn`` in the branches.
        topk: the assigner's candidates per ground truth.
        alpha, beta: the assigner's exponents of score and IoU.
        box_gain, cls_gain, dfl_gain: the loss weights.
        prior_objects, prior_image_size: the class bias prior (objects per image of that
            many pixels on a side).
        topk_candidates: raw detections kept per image.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        num_classes: int,
        reg_max: int = 16,
        box_channels: int | None = None,
        cls_channels: int | None = None,
        norm: str = "bn",
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        box_gain: float = 7.5,
        cls_gain: float = 0.5,
        dfl_gain: float = 1.5,
        prior_objects: float = 5.0,
        prior_image_size: int = 640,
        topk_candidates: int = 1000,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(in_strides) or not in_channels:
            raise ValueError(f"in_channels {list(in_channels)} and in_strides {list(in_strides)} must pair up")
        if reg_max < 2:
            raise ValueError(f"reg_max must be at least 2 bins, got {reg_max}")
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.strides = [int(s) for s in in_strides]
        self.topk, self.alpha, self.beta = topk, alpha, beta
        self.box_gain, self.cls_gain, self.dfl_gain = box_gain, cls_gain, dfl_gain
        self.topk_candidates = topk_candidates
        box_width = box_channels or max(16, in_channels[0] // 4, 4 * reg_max)
        cls_width = cls_channels or in_channels[0]
        box_branches = [self._branch(c, box_width, 4 * reg_max, norm) for c in in_channels]
        cls_branches = [self._branch(c, cls_width, num_classes, norm) for c in in_channels]
        with torch.no_grad():
            for box_branch, cls_branch, stride in zip(box_branches, cls_branches, self.strides):
                box_predictor, cls_predictor = box_branch[-1], cls_branch[-1]
                assert isinstance(box_predictor, nn.Conv2d) and isinstance(cls_predictor, nn.Conv2d)
                assert box_predictor.bias is not None and cls_predictor.bias is not None
                box_predictor.bias.fill_(1.0)
                points_per_image = (prior_image_size / stride) ** 2
                cls_predictor.bias.fill_(math.log(prior_objects / max(num_classes, 1) / points_per_image))
        self.box_branches = nn.ModuleList(box_branches)
        self.cls_branches = nn.ModuleList(cls_branches)

    @staticmethod
    def _branch(in_channels: int, channels: int, outputs: int, norm: str) -> nn.Sequential:
        return nn.Sequential(
            ConvNormAct(in_channels, channels, 3, norm=norm),
            ConvNormAct(channels, channels, 3, norm=norm),
            nn.Conv2d(channels, outputs, 1),
        )

    def class_rows(self) -> dict[str, ClassRows]:
        """Each level's class predictor: one row per class, nothing else."""
        rows: dict[str, ClassRows] = {}
        for level, branch in enumerate(self.cls_branches):
            assert isinstance(branch, nn.Sequential)
            last = f"cls_branches.{level}.{len(branch) - 1}"
            rows |= {f"{last}.weight": ClassRows(), f"{last}.bias": ClassRows()}
        return rows

    def forward(
        self, images: ImageBatch, features: FeatureMaps, targets: list[Targets] | None = None
    ) -> tuple[list[Detections], Losses]:
        maps = list(features.maps.values())
        if len(maps) != len(self.strides):
            raise ValueError(f"the head was built for {len(self.strides)} feature maps, got {len(maps)}")
        pred_logits, pred_dist = self._predict(maps)  # (N, P, K), (N, P, 4, R)
        grid_sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        points, point_strides = make_points(grid_sizes, self.strides, device=pred_dist.device, dtype=torch.float32)
        pred_boxes = distances_to_boxes(dfl_decode(pred_dist), points, point_strides)  # (N, P, 4)
        if self.training:
            if targets is None:
                raise ValueError("YoloHead needs targets in training")
            losses = self._losses(pred_logits, pred_dist, pred_boxes, points, point_strides, targets)
            return no_detections(images), losses
        return self._raw_detections(pred_logits, pred_boxes, images.image_sizes), {}

    def _predict(self, maps: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Class logits ``(N, P, K)`` and box-side bin logits ``(N, P, 4, R)``, in float32."""
        logits_per_level, dist_per_level = [], []
        for box_branch, cls_branch, x in zip(self.box_branches, self.cls_branches, maps):
            n, _, h, w = x.shape
            box = box_branch(x)  # (N, 4*R, Hl, Wl), side-major: 4 sides of R bins
            dist_per_level.append(box.permute(0, 2, 3, 1).reshape(n, h * w, 4, self.reg_max))  # -> (N, Hl*Wl, 4, R)
            logits = cls_branch(x)  # (N, K, Hl, Wl)
            logits_per_level.append(logits.permute(0, 2, 3, 1).reshape(n, h * w, self.num_classes))  # (N, Hl*Wl, K)
        return torch.cat(logits_per_level, dim=1).float(), torch.cat(dist_per_level, dim=1).float()

    def _losses(
        self,
        pred_logits: Tensor,
        pred_dist: Tensor,
        pred_boxes: Tensor,
        points: Tensor,
        point_strides: Tensor,
        targets: list[Targets],
    ) -> Losses:
        gt_boxes, gt_labels, gt_mask = pad_targets(targets, pred_logits.device)
        with torch.no_grad():
            assignment = task_aligned_assign(
                pred_logits.sigmoid(), pred_boxes, points, gt_boxes, gt_labels, gt_mask,
                topk=self.topk, alpha=self.alpha, beta=self.beta,
            )
        target_scores = assignment.target_scores  # (N, P, K)
        normalizer = target_scores.sum().clamp(min=1.0)
        cls_loss = F.binary_cross_entropy_with_logits(pred_logits, target_scores, reduction="sum") / normalizer

        foreground = assignment.foreground  # (N, P)
        weight = target_scores.sum(dim=-1)[foreground]  # (F,)
        target_boxes = assignment.target_boxes[foreground]  # (F, 4)
        box_loss = (complete_box_iou_loss(pred_boxes[foreground], target_boxes) * weight).sum() / normalizer
        # target distances in strides, inside the last bin's reach: (N, P, 4) -> (F, 4)
        target_dist = boxes_to_distances(assignment.target_boxes, points, point_strides)[foreground]
        target_dist = target_dist.clamp(0, self.reg_max - 1 - 0.01)
        dfl = distribution_focal_loss(pred_dist[foreground], target_dist).mean(dim=-1)  # (F, 4) -> (F,)
        dfl_loss = (dfl * weight).sum() / normalizer
        return {
            "loss_yolo_cls": self.cls_gain * cls_loss,
            "loss_yolo_box": self.box_gain * box_loss,
            "loss_yolo_dfl": self.dfl_gain * dfl_loss,
        }

    def _raw_detections(
        self, pred_logits: Tensor, pred_boxes: Tensor, image_sizes: list[tuple[int, int]]
    ) -> list[Detections]:
        results = []
        for logits, boxes, size in zip(pred_logits, pred_boxes, image_sizes):
            flat = logits.reshape(-1)  # (P, K) -> (P*K,), point-major
            k = min(self.topk_candidates, flat.numel())
            top_logits, top_index = flat.topk(k)  # the sigmoid is monotonic: rank logits
            point = top_index // self.num_classes
            results.append(Detections(
                boxes=clip_boxes(boxes[point], size), scores=top_logits.sigmoid(), labels=top_index % self.num_classes,
            ))
        return results


__all__ = [
    "YoloHead",
    "boxes_to_distances",
    "dfl_decode",
    "distances_to_boxes",
    "distribution_focal_loss",
    "make_points",
    "pad_targets",
]
