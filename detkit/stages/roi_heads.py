"""The Fast R-CNN box head: RoI features -> class scores and class-specific boxes (+ masks).

Shape glossary: N images, R_i proposals of image i, R = sum R_i, K foreground
classes (the predictor has K + 1 outputs: background is index 0 inside this
module only), C channels, h x w pooled size, D_i final detections of image i,
M mask side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.ops import BalancedSampler, BoxCoder, Matcher, box_iou
from detkit.stages.base import Losses, MaskHead, RegionExtractor, RoIHead
from detkit.structures import Detections, FeatureMaps, ImageBatch, Proposals, Targets


class TwoFCHead(nn.Module):
    """Flatten, then ``num_fc`` fully connected layers with ReLU: ``(R, C, h, w) -> (R, D)``."""

    def __init__(self, *, in_features: int, representation_size: int, num_fc: int = 2) -> None:
        super().__init__()
        sizes = [in_features] + [representation_size] * num_fc
        for i in range(num_fc):
            self.add_module(f"fc{i + 6}", nn.Linear(sizes[i], sizes[i + 1]))
        self.num_fc = num_fc

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)
        for i in range(self.num_fc):
            x = F.relu(getattr(self, f"fc{i + 6}")(x))
        return x


class BoxPredictor(nn.Module):
    """``(R, D)`` -> class logits ``(R, K + 1)`` and per-class deltas ``(R, 4 (K + 1))``."""

    def __init__(self, *, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, (num_classes + 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class FastRCNNHead(RoIHead):
    """Classify proposals and regress one box per class.

    Args:
        region_extractor: pools the proposals' features (set by the detector builder).
        in_channels: channels of the pooled features (set by the builder).
        num_classes: K (set by the builder).
        pooled_size: side of the pooled features (must match the extractor).
        representation_size: width of the FC layers.
        num_fc: number of FC layers.
        fg_iou_thresh, bg_iou_thresh: proposal matching thresholds (IoU >= fg: object;
            < bg: background; between: ignored).
        batch_size_per_image, positive_fraction: proposals sampled per image.
        bbox_reg_weights: box-coder weights.
        add_gt_proposals: add the ground-truth boxes to the proposals in training.
        smooth_l1_beta: beta of the box regression loss.
        mask_head: predicts masks of the positive proposals (training) and of the
            final detections (:meth:`predict_masks`); ``None`` for boxes only.
    """

    def __init__(
        self,
        *,
        region_extractor: RegionExtractor,
        in_channels: int,
        num_classes: int,
        pooled_size: int = 7,
        representation_size: int = 1024,
        num_fc: int = 2,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        add_gt_proposals: bool = True,
        smooth_l1_beta: float = 1.0 / 9,
        mask_head: MaskHead | None = None,
    ) -> None:
        super().__init__()
        self.region_extractor = region_extractor
        self.num_classes = num_classes
        self.box_head = TwoFCHead(
            in_features=in_channels * pooled_size**2, representation_size=representation_size, num_fc=num_fc
        )
        self.predictor = BoxPredictor(in_features=representation_size, num_classes=num_classes)
        self.box_coder = BoxCoder(weights=tuple(bbox_reg_weights))  # type: ignore[arg-type]
        self.matcher = Matcher(high=fg_iou_thresh, low=bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction)
        self.add_gt_proposals = add_gt_proposals
        self.smooth_l1_beta = smooth_l1_beta
        self.mask_head = mask_head
        self.has_masks = mask_head is not None

    def forward(
        self,
        images: ImageBatch,
        features: FeatureMaps | None,
        proposals: list[Proposals],
        targets: list[Targets] | None = None,
    ) -> tuple[list[Detections], Losses]:
        if self.training and targets is not None:
            boxes, labels, box_targets, gt_index = self._label_and_sample(proposals, targets)
            logits, deltas = self._forward_box(images, features, boxes)
            losses = self._losses(logits, deltas, labels, box_targets)
            if self.mask_head is not None:
                losses["loss_roi_mask"] = self._forward_mask(images, features, boxes, labels, gt_index, targets)
            return [Detections() for _ in proposals], losses
        boxes = [p.boxes for p in proposals]
        logits, deltas = self._forward_box(images, features, boxes)
        return self._raw_detections(logits, deltas, boxes), {}

    def _forward_box(
        self, images: ImageBatch, features: FeatureMaps | None, boxes: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        regions = self.region_extractor(images, features, boxes)
        return self.predictor(self.box_head(regions.features))

    def _forward_mask(
        self,
        images: ImageBatch,
        features: FeatureMaps | None,
        boxes: list[Tensor],
        labels: Tensor,
        gt_index: list[Tensor],
        targets: list[Targets],
    ) -> Tensor:
        """Mask loss of the positive sampled proposals (``labels`` ``(R,)``, 0 = background)."""
        assert self.mask_head is not None
        positive = [lab > 0 for lab in labels.split([b.shape[0] for b in boxes])]
        pos_boxes = [b[p] for b, p in zip(boxes, positive)]
        pos_index = [i[p] for i, p in zip(gt_index, positive)]
        logits = self.mask_head(images, features, pos_boxes)
        return self.mask_head.loss(logits, pos_boxes, pos_index, [t.without_crowd() for t in targets])

    def predict_masks(
        self, images: ImageBatch, features: FeatureMaps | None, detections: list[Detections]
    ) -> list[Detections]:
        """Box-relative mask probabilities ``(D_i, M, M)`` of each detection's class (see :class:`RoIHead`)."""
        if self.mask_head is None:
            return detections
        logits = self.mask_head(images, features, [d.boxes for d in detections])
        labels = torch.cat([d.labels for d in detections]) if detections else logits.new_zeros((0,), dtype=torch.int64)
        probs = self.mask_head.predict(logits, labels).split([len(d) for d in detections])
        return [d.replace(masks=p) for d, p in zip(detections, probs)]

    def _label_and_sample(
        self, proposals: list[Proposals], targets: list[Targets]
    ) -> tuple[list[Tensor], Tensor, Tensor, list[Tensor]]:
        """Sample proposals and label them (see :func:`sample_proposals`); box targets encoded."""
        boxes, labels, matched, gt_index = sample_proposals(
            proposals, targets, matcher=self.matcher, sampler=self.sampler, add_gt_proposals=self.add_gt_proposals
        )
        box_targets = [self.box_coder.encode(m, b) for m, b in zip(matched, boxes)]
        return boxes, torch.cat(labels), torch.cat(box_targets), gt_index

    def _losses(self, logits: Tensor, deltas: Tensor, labels: Tensor, box_targets: Tensor) -> Losses:
        cls_loss = F.cross_entropy(logits, labels) if labels.numel() else logits.sum() * 0
        pos = torch.where(labels > 0)[0]
        # (R, 4 (K + 1)) -> (R, K + 1, 4); only the ground-truth class's deltas are trained
        deltas = deltas.reshape(deltas.shape[0], -1, 4)
        box_loss = F.smooth_l1_loss(
            deltas[pos, labels[pos]], box_targets[pos], beta=self.smooth_l1_beta, reduction="sum"
        ) / max(labels.numel(), 1)
        return {"loss_roi_cls": cls_loss, "loss_roi_box": box_loss}

    def _raw_detections(self, logits: Tensor, deltas: Tensor, boxes: list[Tensor]) -> list[Detections]:
        """Every (proposal, foreground class) pair: ``R_i * K`` detections per image."""
        num_per_image = [b.shape[0] for b in boxes]
        scores = F.softmax(logits, dim=-1)
        reference = torch.cat(boxes) if boxes else deltas.new_zeros((0, 4))
        pred_boxes = self.box_coder.decode(deltas, reference)  # (R, K + 1, 4)
        result = []
        for boxes_i, scores_i in zip(pred_boxes.split(num_per_image), scores.split(num_per_image)):
            r = boxes_i.shape[0]
            labels = torch.arange(self.num_classes, device=scores_i.device).expand(r, -1)
            # drop background column 0, then (R_i, K, ...) -> (R_i * K, ...)
            result.append(
                Detections(
                    boxes=boxes_i[:, 1:].reshape(-1, 4),
                    scores=scores_i[:, 1:].reshape(-1),
                    labels=labels.reshape(-1),
                )
            )
        return result


def sample_proposals(
    proposals: list[Proposals],
    targets: list[Targets],
    *,
    matcher: Matcher,
    sampler: BalancedSampler,
    add_gt_proposals: bool = True,
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """Match proposals to the non-crowd objects, label them and sample a balanced subset.

    Returns, per image: the sampled boxes ``(R_i, 4)``; their labels ``(R_i,)`` (class
    + 1, 0 = background); their matched objects' boxes ``(R_i, 4)`` (meaningful for
    positives only); the index of each one's matched object in ``targets[i]``
    without its crowd objects.
    """
    sampled_boxes, sampled_labels, sampled_matched, sampled_index = [], [], [], []
    for props, tgt in zip(proposals, targets):
        gt = tgt.without_crowd()
        boxes = props.boxes.detach()
        if add_gt_proposals:
            boxes = torch.cat([boxes, gt.boxes.to(boxes.dtype)])
        if len(gt) == 0:
            labels = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
            matched = torch.zeros_like(boxes)
            matches = torch.zeros_like(labels)
        else:
            matches = matcher(box_iou(gt.boxes, boxes))
            labels = gt.labels[matches.clamp(min=0)] + 1
            labels[matches == Matcher.BELOW_LOW] = 0
            labels[matches == Matcher.BETWEEN] = -1
            matched = gt.boxes[matches.clamp(min=0)]
        pos, neg = sampler(labels)
        keep = torch.cat([pos, neg])
        sampled_boxes.append(boxes[keep])
        sampled_labels.append(labels[keep])
        sampled_matched.append(matched[keep])
        sampled_index.append(matches[keep].clamp(min=0))
    return sampled_boxes, sampled_labels, sampled_matched, sampled_index
