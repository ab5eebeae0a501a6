"""The RetinaNet dense head (Lin et al., 2017, "Focal Loss for Dense Object Detection").

Every location of every pyramid level (P3-P7) has ``A = S x R`` anchors (S sizes a
third of an octave apart, R aspect ratios: 9 in the paper). Two towers of four 3x3
conv + ReLU layers, shared by all levels, end in a classifier with one sigmoid per
class and anchor (its bias set so that every probability starts at ``prior_prob``,
which keeps the many easy negatives from swamping the first steps) and a regressor of
four box deltas per anchor.

Training matches anchors to ground truth by IoU: at least ``fg_iou_thresh`` is
foreground, below ``bg_iou_thresh`` background, in between ignored, and each object
also keeps the anchors that overlap it best (low-quality matches). The classification
loss is the sigmoid focal loss over every non-ignored anchor and class, the box loss
the L1 distance of the encoded deltas over the foreground anchors; both are divided by
the image's foreground count, then averaged over the images.

Inference takes, per level, the ``topk_candidates`` best (anchor, class) probabilities,
decodes their boxes and hands them to the post-processing (score threshold, class-wise
NMS, ``detections_per_img``). Thresholding and a top-k commute, so this gives the
candidates of torchvision's ``RetinaNet``, which thresholds first; the numerics follow
it operation by operation, so imported weights give its detections.

Shape glossary: N images, L levels, A anchors per location, K classes (no background),
Hi/Wi level i's size, M_i = Hi * Wi * A anchors of level i, M = sum M_i, G objects of an
image, T_i = min(topk_candidates, M_i * K).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from detkit import ConfigError
from detkit.ops import BoxCoder, Matcher, at_least_float32, box_iou, sigmoid_focal_loss
from detkit.stages import ClassRows, DenseHead, Losses, no_detections
from detkit.structures import Detections, FeatureMaps, ImageBatch, Targets
from detkit_dense_heads.anchors import AnchorGrid, octave_sizes
from detkit_dense_heads.towers import conv_tower, flatten_levels, one_channel_count, predictor, top_candidates

#: RetinaNet's anchor sizes on P3-P7: 32 to 512 pixels, three sizes per octave (torchvision's).
RETINANET_ANCHOR_SIZES: tuple[tuple[int, ...], ...] = tuple(
    tuple(sizes) for sizes in octave_sizes([32, 64, 128, 256, 512], per_octave=3)
)

KEY = "model.dense_head"


class RetinaNetHead(DenseHead):
    """RetinaNet's classification and box towers on every level, with its anchors.

    ``forward(images, features, targets=None) -> (list[Detections], losses)``: at
    inference, per image ``sum_i T_i`` raw detections (level by level, scores descending
    in a level); in training, empty detections and ``loss_retinanet_cls``,
    ``loss_retinanet_box``.

    Args:
        in_channels: channels of every feature map, finest first (passed by the detector
            builder); all equal, one anchor size tuple per map.
        num_classes: K (passed by the detector builder).
        anchor_sizes: per level, finest first, anchor sizes in pixels.
        aspect_ratios: anchor height / width ratios (every level).
        num_convs: conv + ReLU layers of each tower.
        norm: ``none`` (the paper) or ``gn`` (GroupNorm after every tower conv).
        prior_prob: every class probability at initialization.
        fg_iou_thresh: IoU at or above which an anchor is foreground.
        bg_iou_thresh: IoU below which an anchor is background (in between: ignored).
        focal_alpha, focal_gamma: the focal loss's weight of the positives and its exponent.
        topk_candidates: per level, the best (anchor, class) scores kept for post-processing.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        num_classes: int,
        anchor_sizes: Sequence[Sequence[float]] = RETINANET_ANCHOR_SIZES,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        num_convs: int = 4,
        norm: str = "none",
        prior_prob: float = 0.01,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.4,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        topk_candidates: int = 1000,
    ) -> None:
        super().__init__()
        channels = one_channel_count(in_channels, KEY)
        self.anchors = AnchorGrid(sizes=anchor_sizes, aspect_ratios=aspect_ratios)
        if self.anchors.num_levels != len(in_channels):
            raise ConfigError(
                f"{KEY}.anchor_sizes has {self.anchors.num_levels} size tuples but the neck gives "
                f"{len(in_channels)} feature maps; give one tuple per map, finest first (RetinaNet: P3-P7, "
                "model.neck.extra_level=p6p7)"
            )
        num_anchors = self.anchors.num_per_location
        self.num_classes = num_classes
        self.cls_tower = conv_tower(channels, num_convs=num_convs, norm=norm, key=KEY)
        self.box_tower = conv_tower(channels, num_convs=num_convs, norm=norm, key=KEY)
        self.cls_logits = predictor(channels, num_anchors * num_classes, bias=-math.log((1 - prior_prob) / prior_prob))
        self.bbox_deltas = predictor(channels, num_anchors * 4)
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(high=fg_iou_thresh, low=bg_iou_thresh, allow_low_quality_matches=True)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.topk_candidates = topk_candidates

    def class_rows(self) -> dict[str, ClassRows]:
        """The classifier: K rows (one sigmoid per class, no background) per anchor of a location."""
        layout = ClassRows(groups=self.anchors.num_per_location)
        return {"cls_logits.weight": layout, "cls_logits.bias": layout}

    def forward(
        self, images: ImageBatch, features: FeatureMaps, targets: list[Targets] | None = None
    ) -> tuple[list[Detections], Losses]:
        maps = list(features.maps.values())
        pred_logits = flatten_levels([self.cls_logits(self.cls_tower(x)) for x in maps], self.num_classes)  # (N, M, K)
        pred_deltas = flatten_levels([self.bbox_deltas(self.box_tower(x)) for x in maps], 4)  # (N, M, 4)
        anchors_per_level = self.anchors.for_maps(images, maps)  # L x (M_i, 4)
        if self.training:
            if targets is None:
                raise ValueError("RetinaNetHead needs targets in training")
            return no_detections(images), self._losses(pred_logits, pred_deltas, torch.cat(anchors_per_level), targets)
        return self._raw_detections(pred_logits, pred_deltas, anchors_per_level), {}

    def _match(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """``(M,)`` the object of every anchor, :attr:`Matcher.BELOW_LOW` (background) or :attr:`Matcher.BETWEEN`."""
        if gt_boxes.numel() == 0:
            return torch.full((anchors.shape[0],), Matcher.BELOW_LOW, dtype=torch.int64, device=anchors.device)
        return self.matcher(box_iou(gt_boxes, anchors))  # (G, M) -> (M,)

    def _losses(self, pred_logits: Tensor, pred_deltas: Tensor, anchors: Tensor, targets: list[Targets]) -> Losses:
        """Focal loss and L1 box loss, each per image over its foreground count, averaged over the images.

        ``pred_logits (N, M, K)``, ``pred_deltas (N, M, 4)``, ``anchors (M, 4)``. Crowd
        objects are left out of the matching.
        """
        cls_losses, box_losses = [], []
        for logits, deltas, targets_per_image in zip(pred_logits, pred_deltas, targets):
            gt = targets_per_image.without_crowd()
            matches = self._match(gt.boxes, anchors)  # (M,)
            fg_idx = torch.where(matches >= 0)[0]
            num_fg = max(1, fg_idx.numel())
            gt_classes = torch.zeros_like(logits, dtype=torch.float32)  # (M, K) one-hot of the matched class
            gt_classes[fg_idx, gt.labels[matches[fg_idx]]] = 1.0
            valid = matches != Matcher.BETWEEN
            cls_loss = sigmoid_focal_loss(
                at_least_float32(logits[valid]), gt_classes[valid],
                alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum",
            )
            cls_losses.append(cls_loss / num_fg)
            gt_deltas = self.box_coder.encode(gt.boxes[matches[fg_idx]], anchors[fg_idx])  # (F, 4)
            box_losses.append(F.l1_loss(at_least_float32(deltas[fg_idx]), gt_deltas, reduction="sum") / num_fg)
        num_images = max(1, len(targets))
        return {
            "loss_retinanet_cls": torch.stack(cls_losses).sum() / num_images,
            "loss_retinanet_box": torch.stack(box_losses).sum() / num_images,
        }

    def _raw_detections(
        self, pred_logits: Tensor, pred_deltas: Tensor, anchors_per_level: list[Tensor]
    ) -> list[Detections]:
        """Per image and level, the ``topk_candidates`` best (anchor, class) pairs with their decoded boxes."""
        num_per_level = [int(a.shape[0]) for a in anchors_per_level]
        results = []
        for logits, deltas in zip(pred_logits, pred_deltas):  # (M, K), (M, 4)
            boxes, scores, labels = [], [], []
            for logits_l, deltas_l, anchors_l in zip(
                logits.split(num_per_level), deltas.split(num_per_level), anchors_per_level
            ):
                top_scores, anchor_idx, top_labels = top_candidates(
                    torch.sigmoid(at_least_float32(logits_l)), self.topk_candidates
                )  # (M_i, K) -> (T_i,) each
                boxes.append(self.box_coder.decode(deltas_l[anchor_idx], anchors_l[anchor_idx])[:, 0])  # (T_i, 4)
                scores.append(top_scores)
                labels.append(top_labels)
            results.append(Detections(boxes=torch.cat(boxes), scores=torch.cat(scores), labels=torch.cat(labels)))
        return results


__all__ = ["RETINANET_ANCHOR_SIZES", "RetinaNetHead"]
