"""The SSD dense head (Liu et al., 2016): per-cell class scores and box deltas for every default box.

Training matches default boxes to ground truth by IoU (at least ``iou_thresh``, and
every ground truth keeps its best default box), mines the hardest negatives
(``neg_to_pos_ratio`` per positive, per image), and sums a softmax cross-entropy
and a smooth-L1 box loss, both divided by the number of positives. Inference decodes
every default box and keeps, per class, the ``topk_candidates`` best as raw detections
(thresholds and NMS are :class:`PostProcess`'s). Numerics follow torchvision's ``SSD``.

Shape glossary: N images, A default boxes of the image (all maps), K classes (logits
have K + 1, background is 0), G ground-truth boxes, Hk/Wk map k size, B_k boxes per
cell of map k, T = min(topk_candidates, A).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.ops import BoxCoder, Matcher, box_iou, clip_boxes
from detkit.stages import ClassRows, DenseHead, Losses, no_detections
from detkit.structures import Detections, FeatureMaps, ImageBatch, Targets
from detkit_single_shot.default_boxes import DefaultBoxes

#: SSD300's default boxes (torchvision's ``ssd300_vgg16``).
SSD300_ASPECT_RATIOS: list[list[float]] = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
SSD300_SCALES: list[float] = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
SSD300_STEPS: list[int] = [8, 16, 32, 64, 100, 300]


def match_default_boxes(gt_boxes: Tensor, default_boxes: Tensor, *, iou_thresh: float) -> Tensor:
    """SSD matching: best ground truth at IoU >= ``iou_thresh``, plus each ground truth's best box.

    Args:
        gt_boxes: ``(G, 4)`` xyxy.
        default_boxes: ``(A, 4)`` xyxy.

    Returns:
        ``(A,)`` int64: the matched ground-truth index, or -1 (background).
    """
    if gt_boxes.numel() == 0:
        return torch.full((default_boxes.shape[0],), -1, dtype=torch.int64, device=default_boxes.device)
    iou = box_iou(gt_boxes, default_boxes)  # (G, A)
    matches = Matcher(high=iou_thresh, low=iou_thresh)(iou)
    # force: every ground truth claims the default box it overlaps best (later ones win ties)
    best_box_per_gt = iou.argmax(dim=1)  # (G,)
    matches[best_box_per_gt] = torch.arange(gt_boxes.shape[0], dtype=torch.int64, device=matches.device)
    return matches


def hard_negative_mask(cls_loss: Tensor, foreground: Tensor, *, neg_to_pos_ratio: float) -> Tensor:
    """The negatives whose classification loss is highest, ``neg_to_pos_ratio`` per positive, per image.

    Args:
        cls_loss: ``(N, A)`` cross-entropy of every default box.
        foreground: ``(N, A)`` bool, the positives.

    Returns:
        ``(N, A)`` bool: the kept negatives (never a positive); all of them when an
        image has fewer than ``neg_to_pos_ratio`` times its positives.
    """
    num_negative = neg_to_pos_ratio * foreground.sum(dim=1, keepdim=True)  # (N, 1)
    negative_loss = cls_loss.detach().clone()
    negative_loss[foreground] = -math.inf  # positives rank last
    order = negative_loss.argsort(dim=1, descending=True)  # (N, A) box indices by loss
    rank = order.argsort(dim=1)  # (N, A) rank of every box
    return (rank < num_negative) & ~foreground


class SSDHead(DenseHead):
    """SSD's 3x3 convolution predictors on every feature map, with their default boxes.

    ``forward(images, features, targets=None) -> (list[Detections], losses)``: at
    inference, per image ``K * T`` raw detections (class-major, scores descending in a
    class); in training, empty detections and ``loss_ssd_cls``, ``loss_ssd_box``.

    Args:
        in_channels: channels of every feature map, in the backbone's order (passed by
            the detector builder).
        num_classes: K, without background (passed by the detector builder).
        aspect_ratios, scales, min_ratio, max_ratio, steps, clip: the default boxes
            (:class:`DefaultBoxes`; ``min_ratio`` and ``max_ratio`` apply when ``scales`` is None).
        iou_thresh: IoU at which a default box matches a ground truth.
        neg_to_pos_ratio: hard negatives kept per positive.
        box_coder_weights: ``(wx, wy, ww, wh)`` of the box deltas.
        topk_candidates: per class, the best default boxes kept for post-processing.
    """

    #: the loss keys are ``<loss_prefix>_cls`` and ``<loss_prefix>_box``
    loss_prefix = "loss_ssd"

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        num_classes: int,
        aspect_ratios: Sequence[Sequence[float]] = tuple(SSD300_ASPECT_RATIOS),
        scales: Sequence[float] | None = tuple(SSD300_SCALES),
        min_ratio: float = 0.15,
        max_ratio: float = 0.9,
        steps: Sequence[int] | None = tuple(SSD300_STEPS),
        clip: bool = True,
        iou_thresh: float = 0.5,
        neg_to_pos_ratio: float = 3.0,
        box_coder_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        topk_candidates: int = 400,
    ) -> None:
        super().__init__()
        self.default_boxes = DefaultBoxes(
            aspect_ratios=aspect_ratios, scales=scales, min_ratio=min_ratio, max_ratio=max_ratio, steps=steps,
            clip=clip,
        )
        boxes_per_cell = self.default_boxes.num_per_location()
        if len(in_channels) != len(boxes_per_cell):
            raise ValueError(
                f"the backbone gives {len(in_channels)} feature maps but aspect_ratios lists {len(boxes_per_cell)}"
            )
        self.num_classes = num_classes
        self.cls_logits = nn.ModuleList(
            self._predictor(c, (num_classes + 1) * b) for c, b in zip(in_channels, boxes_per_cell)
        )
        self.bbox_deltas = nn.ModuleList(self._predictor(c, 4 * b) for c, b in zip(in_channels, boxes_per_cell))
        self._init_predictors()
        wx, wy, ww, wh = (float(w) for w in box_coder_weights)
        self.box_coder = BoxCoder(weights=(wx, wy, ww, wh))
        self.iou_thresh = iou_thresh
        self.neg_to_pos_ratio = neg_to_pos_ratio
        self.topk_candidates = topk_candidates

    @staticmethod
    def _predictor(in_channels: int, out_channels: int) -> nn.Module:
        """One map's predictor of ``out_channels`` values per location: SSD's 3x3 convolution.

        A subclass may return a small network; its last convolution gives the values.
        """
        return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def _init_predictors(self) -> None:
        """Xavier-uniform weights and zero biases for the predictors (torchvision's SSD)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def class_rows(self) -> dict[str, ClassRows]:
        """Each level's classifier: K + 1 channels (background first) per default box of a location."""
        rows: dict[str, ClassRows] = {}
        for level, predictor in enumerate(self.cls_logits):
            # the predictor's last convolution gives the logits ("" when the predictor is that convolution)
            name, conv = [(n, m) for n, m in predictor.named_modules() if isinstance(m, nn.Conv2d)][-1]
            assert isinstance(conv, nn.Conv2d)
            prefix = f"cls_logits.{level}." + (f"{name}." if name else "")
            layout = ClassRows(groups=conv.out_channels // (self.num_classes + 1), background=True)
            rows |= {f"{prefix}weight": layout, f"{prefix}bias": layout}
        return rows

    def forward(
        self, images: ImageBatch, features: FeatureMaps, targets: list[Targets] | None = None
    ) -> tuple[list[Detections], Losses]:
        maps = list(features.maps.values())
        pred_logits = self._flatten(self.cls_logits, maps, self.num_classes + 1)  # (N, A, K+1)
        pred_deltas = self._flatten(self.bbox_deltas, maps, 4)  # (N, A, 4)
        grid_sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        padded_size = (int(images.tensor.shape[-2]), int(images.tensor.shape[-1]))
        default_boxes = self.default_boxes(grid_sizes, padded_size, dtype=maps[0].dtype).to(maps[0].device)  # (A, 4)
        if self.training:
            if targets is None:
                raise ValueError("SSDHead needs targets in training")
            return no_detections(images), self._losses(pred_logits, pred_deltas, default_boxes, targets)
        return self._raw_detections(pred_logits, pred_deltas, default_boxes, images.image_sizes), {}

    @staticmethod
    def _flatten(convs: nn.ModuleList, maps: list[Tensor], columns: int) -> Tensor:
        per_level = []
        for conv, x in zip(convs, maps):
            out = conv(x)  # (N, B_k * columns, Hk, Wk)
            n, _, h, w = out.shape
            out = out.view(n, -1, columns, h, w).permute(0, 3, 4, 1, 2)  # -> (N, Hk, Wk, B_k, columns)
            per_level.append(out.reshape(n, -1, columns))  # -> (N, Hk*Wk*B_k, columns)
        return torch.cat(per_level, dim=1)  # (N, A, columns)

    def _losses(
        self, pred_logits: Tensor, pred_deltas: Tensor, default_boxes: Tensor, targets: list[Targets]
    ) -> Losses:
        box_loss = pred_deltas.sum() * 0.0  # keeps the graph when no image has a positive
        gt_classes = []
        for deltas_per_image, targets_per_image in zip(pred_deltas, targets):
            targets_per_image = targets_per_image.without_crowd()
            matches = match_default_boxes(targets_per_image.boxes, default_boxes, iou_thresh=self.iou_thresh)
            fg = torch.where(matches >= 0)[0]
            gt_boxes = targets_per_image.boxes[matches[fg]]
            target_deltas = self.box_coder.encode(gt_boxes, default_boxes[fg])
            box_loss = box_loss + F.smooth_l1_loss(deltas_per_image[fg], target_deltas, reduction="sum")
            classes = torch.zeros_like(matches)  # (A,) 0 = background
            classes[fg] = targets_per_image.labels[matches[fg]] + 1
            gt_classes.append(classes)
        gt_classes_batch = torch.stack(gt_classes)  # (N, A)
        # (N, A, K+1) -> (N*A, K+1), losses back to (N, A)
        cls_loss = F.cross_entropy(
            pred_logits.reshape(-1, pred_logits.shape[-1]), gt_classes_batch.reshape(-1), reduction="none"
        ).view_as(gt_classes_batch)
        foreground = gt_classes_batch > 0
        negatives = hard_negative_mask(cls_loss, foreground, neg_to_pos_ratio=self.neg_to_pos_ratio)
        normalizer = max(1, int(foreground.sum()))
        return {
            f"{self.loss_prefix}_cls": (cls_loss[foreground].sum() + cls_loss[negatives].sum()) / normalizer,
            f"{self.loss_prefix}_box": box_loss / normalizer,
        }

    def _raw_detections(
        self, pred_logits: Tensor, pred_deltas: Tensor, default_boxes: Tensor, image_sizes: list[tuple[int, int]]
    ) -> list[Detections]:
        results = []
        scores_batch = F.softmax(pred_logits, dim=-1)[:, :, 1:]  # (N, A, K+1) -> (N, A, K), background dropped
        for deltas, scores, size in zip(pred_deltas, scores_batch, image_sizes):
            boxes = clip_boxes(self.box_coder.decode(deltas, default_boxes)[:, 0], size)  # (A, 1, 4) -> (A, 4)
            k = min(self.topk_candidates, scores.shape[0])
            top_scores, top_idx = scores.topk(k, dim=0)  # (T, K) each, per class descending
            top_scores, top_idx = top_scores.t().reshape(-1), top_idx.t().reshape(-1)  # (K, T) -> (K*T,)
            labels = torch.arange(self.num_classes, device=scores.device).repeat_interleave(k)  # (K*T,)
            results.append(Detections(boxes=boxes[top_idx], scores=top_scores, labels=labels))
        return results


__all__ = ["SSDHead", "hard_negative_mask", "match_default_boxes"]
