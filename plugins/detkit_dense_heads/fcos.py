"""The FCOS dense head (Tian et al., 2019, "FCOS: Fully Convolutional One-Stage Object Detection").

No anchor boxes: every location of every pyramid level (P3-P7) predicts K class
probabilities, its distances to the four sides of its object (left, top, right,
bottom) and a "centerness" that down-weights locations far from the object's centre.
Each level has a nominal size ``s`` (8 to 128 pixels, its nominal stride), handled as
one square reference box of side ``s`` at the location; the distances are predicted
in units of ``s`` (a ReLU keeps them non-negative), so one head serves every level
without the paper's learned per-level scales (torchvision's variant). The towers are
four 3x3 conv + GroupNorm(32) + ReLU layers, as torchvision's.

Assignment (:func:`fcos_assign`): a location is a positive of an object when it lies
inside the box, within ``center_sampling_radius * s`` of its centre (centre
sampling, in each axis), and the longest of its four distances falls in the level's
size range ``(4 s, 8 s)`` (the first level from 0, the last to infinity: P3 takes
objects up to 64 pixels from a location, P7 those beyond 512); a location that
qualifies for several objects takes the smallest. The losses are the sigmoid focal
loss over every location and class, the GIoU loss of the decoded boxes and the binary
cross-entropy of the centerness against ``sqrt(min(l, r) / max(l, r) * min(t, b) /
max(t, b))`` over the positives, all three divided by the batch's positive count.

Inference scores a (location, class) pair ``sqrt(p_class * p_centerness)``, keeps per
level the ``topk_candidates`` best and decodes their boxes; the post-processing
thresholds and runs the class-wise NMS. The numerics follow torchvision's ``FCOS``.

Shape glossary: N images, L levels, K classes, Hi/Wi level i's size, M_i = Hi * Wi
locations of level i, M = sum M_i, G objects of an image, T_i = min(topk_candidates, M_i * K).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from detkit import ConfigError
from detkit.ops import at_least_float32, generalized_box_iou_loss, sigmoid_focal_loss
from detkit.stages import ClassRows, DenseHead, Losses, no_detections
from detkit.structures import Detections, FeatureMaps, ImageBatch, Targets
from detkit_dense_heads.anchors import AnchorGrid
from detkit_dense_heads.towers import conv_tower, flatten_levels, one_channel_count, predictor, top_candidates

#: FCOS's level sizes on P3-P7 (the nominal strides).
FCOS_LEVEL_SIZES: tuple[int, ...] = (8, 16, 32, 64, 128)

KEY = "model.dense_head"


def encode_distances(reference_boxes: Tensor, boxes: Tensor) -> Tensor:
    """Distances from each reference box's centre to the sides of its box, in units of the reference's size.

    ``(..., 4), (..., 4) -> (..., 4)`` ``(l, t, r, b) / (w, h, w, h)`` of the reference.
    """
    centre_x = 0.5 * (reference_boxes[..., 0] + reference_boxes[..., 2])
    centre_y = 0.5 * (reference_boxes[..., 1] + reference_boxes[..., 3])
    distances = torch.stack(
        (centre_x - boxes[..., 0], centre_y - boxes[..., 1], boxes[..., 2] - centre_x, boxes[..., 3] - centre_y),
        dim=-1,
    )
    return distances / _sizes(reference_boxes)


def decode_distances(distances: Tensor, reference_boxes: Tensor) -> Tensor:
    """The boxes whose sides lie ``distances * size`` from the reference boxes' centres (inverse of encoding).

    ``(..., 4), (..., 4) -> (..., 4)`` xyxy, in ``distances``' dtype.
    """
    reference_boxes = reference_boxes.to(distances.dtype)
    centre_x = 0.5 * (reference_boxes[..., 0] + reference_boxes[..., 2])
    centre_y = 0.5 * (reference_boxes[..., 1] + reference_boxes[..., 3])
    distances = distances * _sizes(reference_boxes)
    return torch.stack(
        (centre_x - distances[..., 0], centre_y - distances[..., 1],
         centre_x + distances[..., 2], centre_y + distances[..., 3]),
        dim=-1,
    )


def _sizes(boxes: Tensor) -> Tensor:
    """``(..., 4)`` -> ``(..., 4)`` widths and heights as ``(w, h, w, h)``."""
    widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return torch.stack((widths, heights, widths, heights), dim=-1)


def fcos_assign(
    gt_boxes: Tensor, reference_boxes: Tensor, num_per_level: Sequence[int], *, center_sampling_radius: float
) -> Tensor:
    """The object each location is a positive of, or -1.

    A location (the centre of its reference box, of side ``s``) is a positive of an
    object when (1) it lies strictly inside the box, (2) within ``center_sampling_radius
    * s`` of the box's centre along x and along y, and (3) its longest distance to the
    box's sides lies strictly between ``4 s`` and ``8 s`` (0 for the first level,
    infinity for the last). Among several such objects the smallest (area) wins.

    Args:
        gt_boxes: ``(G, 4)`` xyxy.
        reference_boxes: ``(M, 4)`` square reference boxes of all levels, finest first.
        num_per_level: ``M_i`` of each level.

    Returns:
        ``(M,)`` int64 object index or -1.
    """
    num_locations = reference_boxes.shape[0]
    if gt_boxes.numel() == 0:
        return torch.full((num_locations,), -1, dtype=torch.int64, device=reference_boxes.device)
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # (G, 2)
    centres = (reference_boxes[:, :2] + reference_boxes[:, 2:]) / 2  # (M, 2)
    sizes = reference_boxes[:, 2] - reference_boxes[:, 0]  # (M,)
    # (M, 1, 2) - (1, G, 2) -> (M, G): the larger of the x and y offsets from each object's centre
    near_centre = (centres[:, None, :] - gt_centres[None, :, :]).abs().max(dim=2).values < (
        center_sampling_radius * sizes[:, None]
    )
    x, y = centres[:, 0:1], centres[:, 1:2]  # (M, 1) each
    # (M, G, 4): distances to the left, top, right and bottom sides
    distances = torch.stack([x - gt_boxes[:, 0], y - gt_boxes[:, 1], gt_boxes[:, 2] - x, gt_boxes[:, 3] - y], dim=2)
    lower, upper = sizes * 4, sizes * 8
    lower[: num_per_level[0]] = 0
    upper[-num_per_level[-1] :] = math.inf
    longest = distances.max(dim=2).values  # (M, G)
    positive = (
        near_centre
        & (distances.min(dim=2).values > 0)
        & (longest > lower[:, None])
        & (longest < upper[:, None])
    )
    areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])  # (G,)
    # (M, G): the area of every object a location may take, infinite elsewhere; the smallest wins
    candidate_areas = torch.where(positive, areas[None, :], torch.full_like(longest, math.inf))
    smallest, matches = candidate_areas.min(dim=1)  # (M,)
    matches[torch.isinf(smallest)] = -1
    return matches


class FCOSHead(DenseHead):
    """FCOS's classification tower and box tower (distances and centerness) on every level.

    ``forward(images, features, targets=None) -> (list[Detections], losses)``: at
    inference, per image ``sum_i T_i`` raw detections (level by level, scores descending
    in a level); in training, empty detections and ``loss_fcos_cls``, ``loss_fcos_box``,
    ``loss_fcos_centerness``.

    Args:
        in_channels: channels of every feature map, finest first (passed by the detector
            builder); all equal, one level size per map.
        num_classes: K (passed by the detector builder).
        level_sizes: per level, finest first, its nominal size ``s`` in pixels: the unit of
            the distances, and the size ranges ``(4 s, 8 s)`` of the assignment.
        num_convs: conv + norm + ReLU layers of each tower.
        norm: ``gn`` (GroupNorm of 32 groups, the paper's and torchvision's) or ``none``.
        prior_prob: every class probability at initialization.
        center_sampling_radius: positives lie within this many ``s`` of the object's centre.
        focal_alpha, focal_gamma: the focal loss's weight of the positives and its exponent.
        topk_candidates: per level, the best (location, class) scores kept for post-processing.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        num_classes: int,
        level_sizes: Sequence[float] = FCOS_LEVEL_SIZES,
        num_convs: int = 4,
        norm: str = "gn",
        prior_prob: float = 0.01,
        center_sampling_radius: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        topk_candidates: int = 1000,
    ) -> None:
        super().__init__()
        channels = one_channel_count(in_channels, KEY)
        if len(level_sizes) != len(in_channels):
            raise ConfigError(
                f"{KEY}.level_sizes has {len(level_sizes)} sizes but the neck gives {len(in_channels)} feature "
                "maps; give one size per map, finest first (FCOS: P3-P7, model.neck.extra_level=p6p7)"
            )
        self.anchors = AnchorGrid(sizes=[[s] for s in level_sizes], aspect_ratios=[1.0])
        self.num_classes = num_classes
        self.cls_tower = conv_tower(channels, num_convs=num_convs, norm=norm, key=KEY)
        self.cls_logits = predictor(channels, num_classes, bias=-math.log((1 - prior_prob) / prior_prob))
        self.box_tower = conv_tower(channels, num_convs=num_convs, norm=norm, key=KEY)
        self.bbox_distances = predictor(channels, 4)
        self.centerness = predictor(channels, 1)
        self.center_sampling_radius = center_sampling_radius
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.topk_candidates = topk_candidates

    def class_rows(self) -> dict[str, ClassRows]:
        """The classifier: K rows (one sigmoid per class, no background)."""
        return {"cls_logits.weight": ClassRows(), "cls_logits.bias": ClassRows()}

    def forward(
        self, images: ImageBatch, features: FeatureMaps, targets: list[Targets] | None = None
    ) -> tuple[list[Detections], Losses]:
        maps = list(features.maps.values())
        box_features = [self.box_tower(x) for x in maps]
        pred_logits = flatten_levels([self.cls_logits(self.cls_tower(x)) for x in maps], self.num_classes)  # (N, M, K)
        pred_distances = flatten_levels([F.relu(self.bbox_distances(x)) for x in box_features], 4)  # (N, M, 4)
        pred_centerness = flatten_levels([self.centerness(x) for x in box_features], 1)[..., 0]  # (N, M)
        references_per_level = self.anchors.for_maps(images, maps)  # L x (M_i, 4)
        if self.training:
            if targets is None:
                raise ValueError("FCOSHead needs targets in training")
            losses = self._losses(pred_logits, pred_distances, pred_centerness, references_per_level, targets)
            return no_detections(images), losses
        return self._raw_detections(pred_logits, pred_distances, pred_centerness, references_per_level), {}

    def _losses(
        self,
        pred_logits: Tensor,
        pred_distances: Tensor,
        pred_centerness: Tensor,
        references_per_level: list[Tensor],
        targets: list[Targets],
    ) -> Losses:
        """Focal, GIoU and centerness losses over the batch, each divided by the batch's positive count.

        ``pred_logits (N, M, K)``, ``pred_distances (N, M, 4)``, ``pred_centerness (N, M)``.
        Crowd objects are left out of the assignment.
        """
        references = torch.cat(references_per_level)  # (M, 4)
        num_per_level = [int(r.shape[0]) for r in references_per_level]
        gt_boxes_per_image, gt_labels_per_image = [], []
        for targets_per_image in targets:
            gt = targets_per_image.without_crowd()
            matches = fcos_assign(
                gt.boxes, references, num_per_level, center_sampling_radius=self.center_sampling_radius
            )  # (M,)
            if len(gt) == 0:
                gt_boxes_per_image.append(references.new_zeros(references.shape))
                gt_labels_per_image.append(torch.full_like(matches, -1))
                continue
            labels = gt.labels[matches.clamp(min=0)]
            labels[matches < 0] = -1
            gt_boxes_per_image.append(gt.boxes[matches.clamp(min=0)])
            gt_labels_per_image.append(labels)
        gt_boxes, gt_labels = torch.stack(gt_boxes_per_image), torch.stack(gt_labels_per_image)  # (N, M, 4), (N, M)
        foreground = gt_labels >= 0  # (N, M)
        num_fg = max(1, int(foreground.sum()))

        gt_classes = torch.zeros_like(pred_logits, dtype=torch.float32)  # (N, M, K) one-hot of the object's class
        gt_classes[foreground, gt_labels[foreground]] = 1.0
        cls_loss = sigmoid_focal_loss(
            at_least_float32(pred_logits), gt_classes, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        )
        # (N, M, 4) -> (F, 4): the positives' references, predicted boxes and objects
        fg_references = references.expand_as(gt_boxes)[foreground]
        fg_gt_boxes = gt_boxes[foreground]
        pred_boxes = decode_distances(at_least_float32(pred_distances[foreground]), fg_references)
        box_loss = generalized_box_iou_loss(pred_boxes, fg_gt_boxes, reduction="sum")
        gt_distances = encode_distances(fg_references, fg_gt_boxes)  # (F, 4) l, t, r, b
        left_right, top_bottom = gt_distances[:, [0, 2]], gt_distances[:, [1, 3]]
        gt_centerness = torch.sqrt(
            (left_right.min(dim=-1).values / left_right.max(dim=-1).values)
            * (top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values)
        )
        centerness_loss = F.binary_cross_entropy_with_logits(
            at_least_float32(pred_centerness[foreground]), gt_centerness, reduction="sum"
        )
        return {
            "loss_fcos_cls": cls_loss / num_fg,
            "loss_fcos_box": box_loss / num_fg,
            "loss_fcos_centerness": centerness_loss / num_fg,
        }

    def _raw_detections(
        self, pred_logits: Tensor, pred_distances: Tensor, pred_centerness: Tensor, references_per_level: list[Tensor]
    ) -> list[Detections]:
        """Per image and level, the ``topk_candidates`` best (location, class) scores and their decoded boxes."""
        num_per_level = [int(r.shape[0]) for r in references_per_level]
        results = []
        for logits, distances, centerness in zip(pred_logits, pred_distances, pred_centerness):  # (M, K), (M, 4), (M,)
            boxes, scores, labels = [], [], []
            for logits_l, distances_l, centerness_l, references_l in zip(
                logits.split(num_per_level), distances.split(num_per_level), centerness.split(num_per_level),
                references_per_level,
            ):
                class_probs = torch.sigmoid(at_least_float32(logits_l))  # (M_i, K)
                centerness_probs = torch.sigmoid(at_least_float32(centerness_l))[:, None]  # (M_i,) -> (M_i, 1)
                top_scores, location_idx, top_labels = top_candidates(
                    torch.sqrt(class_probs * centerness_probs), self.topk_candidates
                )  # (M_i, K) -> (T_i,) each
                boxes.append(decode_distances(at_least_float32(distances_l[location_idx]), references_l[location_idx]))
                scores.append(top_scores)
                labels.append(top_labels)
            results.append(Detections(boxes=torch.cat(boxes), scores=torch.cat(scores), labels=torch.cat(labels)))
        return results


__all__ = ["FCOS_LEVEL_SIZES", "FCOSHead", "decode_distances", "encode_distances", "fcos_assign"]
