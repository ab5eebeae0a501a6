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

from detkit.ops import BalancedSampler, BoxCoder, Matcher, at_least_float32, box_iou
from detkit.stages.base import ClassRows, Losses, MaskHead, RegionExtractor, RoIHead, no_detections
from detkit.structures import Detections, FeatureMaps, ImageBatch, Proposals, SampledProposals, Targets


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
        self.proposal_sampler = ProposalSampler(
            fg_iou_thresh=fg_iou_thresh, bg_iou_thresh=bg_iou_thresh, batch_size_per_image=batch_size_per_image,
            positive_fraction=positive_fraction, add_gt_proposals=add_gt_proposals,
        )
        self.smooth_l1_beta = smooth_l1_beta
        self.mask_head = mask_head
        self.has_masks = mask_head is not None

    def class_rows(self) -> dict[str, ClassRows]:
        """The box predictor's class-dependent tensors (background at row 0, four deltas per class)."""
        return {
            "predictor.cls_score.weight": ClassRows(background=True),
            "predictor.cls_score.bias": ClassRows(background=True),
            "predictor.bbox_pred.weight": ClassRows(per_class=4, background=True),
            "predictor.bbox_pred.bias": ClassRows(per_class=4, background=True),
        }

    def forward(
        self,
        images: ImageBatch,
        features: FeatureMaps | None,
        proposals: list[Proposals],
        targets: list[Targets] | None = None,
    ) -> tuple[list[Detections], Losses]:
        if self.training and targets is not None:
            sampled = self.proposal_sampler(proposals, targets)
            losses = self._box_losses(images, features, sampled)
            if self.mask_head is not None:
                losses["loss_roi_mask"] = self._mask_loss(images, features, sampled, targets)
            return no_detections(images), losses
        proposal_boxes = [p.boxes for p in proposals]
        pred_logits, pred_deltas = self._forward_box(images, features, proposal_boxes)
        return self._raw_detections(pred_logits, pred_deltas, proposal_boxes), {}

    def _forward_box(
        self, images: ImageBatch, features: FeatureMaps | None, boxes: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Class logits ``(R, K + 1)`` and per-class deltas ``(R, 4 (K + 1))`` of ``boxes`` (per image)."""
        regions = self.region_extractor(images, features, boxes)
        return self.predictor(self.box_head(regions.features))

    def _box_losses(
        self, images: ImageBatch, features: FeatureMaps | None, sampled: list[SampledProposals]
    ) -> Losses:
        """Cross-entropy over K + 1 classes and smooth-L1 on the positives' ground-truth class deltas."""
        pred_logits, pred_deltas = self._forward_box(images, features, [s.proposal_boxes for s in sampled])
        samples = SampledProposals.cat(sampled)
        gt_classes = samples.gt_labels + 1  # background -1 -> 0, class c -> c + 1
        cls_loss = F.cross_entropy(pred_logits, gt_classes) if len(samples) else pred_logits.sum() * 0
        pos = torch.where(gt_classes > 0)[0]
        gt_deltas = self.box_coder.encode(samples.gt_boxes[pos], samples.proposal_boxes[pos])
        # (R, 4 (K + 1)) -> (R, K + 1, 4); only the ground-truth class's deltas are trained
        pred_deltas = pred_deltas.reshape(pred_deltas.shape[0], -1, 4)[pos, gt_classes[pos]]
        box_loss = F.smooth_l1_loss(pred_deltas, gt_deltas, beta=self.smooth_l1_beta, reduction="sum")
        return {"loss_roi_cls": cls_loss, "loss_roi_box": box_loss / max(len(samples), 1)}

    def _mask_loss(
        self,
        images: ImageBatch,
        features: FeatureMaps | None,
        sampled: list[SampledProposals],
        targets: list[Targets],
    ) -> Tensor:
        """The mask head's loss on the positive samples."""
        assert self.mask_head is not None
        positives = [s.positive() for s in sampled]
        pred_mask_logits = self.mask_head(images, features, [p.proposal_boxes for p in positives])
        return self.mask_head.loss(pred_mask_logits, positives, targets)

    def predict_masks(
        self, images: ImageBatch, features: FeatureMaps | None, detections: list[Detections]
    ) -> list[Detections]:
        """Box-relative mask probabilities ``(D_i, M, M)`` of each detection's class (see :class:`RoIHead`)."""
        if self.mask_head is None:
            return detections
        pred_mask_logits = self.mask_head(images, features, [d.boxes for d in detections])
        labels = (
            torch.cat([d.labels for d in detections])
            if detections
            else pred_mask_logits.new_zeros((0,), dtype=torch.int64)
        )
        probs = self.mask_head.predict(pred_mask_logits, labels).split([len(d) for d in detections])
        return [d.replace(masks=p) for d, p in zip(detections, probs)]

    def _raw_detections(self, pred_logits: Tensor, pred_deltas: Tensor, boxes: list[Tensor]) -> list[Detections]:
        """Every (proposal, foreground class) pair: ``R_i * K`` detections per image.

        Scores and boxes are float32 also under autocast (half-precision logits and deltas).
        """
        num_per_image = [b.shape[0] for b in boxes]
        scores = F.softmax(at_least_float32(pred_logits), dim=-1)
        reference = torch.cat(boxes) if boxes else pred_deltas.new_zeros((0, 4))
        pred_boxes = self.box_coder.decode(pred_deltas, reference)  # (R, K + 1, 4)
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


class ProposalSampler:
    """Label proposals by their IoU with the objects and sample a balanced subset: a RoI head's training samples.

    ``sampler(proposals, targets) -> list[SampledProposals]``, positives first in each image.

    Args:
        fg_iou_thresh: IoU with an object at or above which a proposal takes its class.
        bg_iou_thresh: IoU below which (with every object) a proposal is background;
            between the two it is never sampled.
        batch_size_per_image: samples per image.
        positive_fraction: target share of positives among them.
        add_gt_proposals: add the objects' own boxes to the proposals first.
    """

    def __init__(
        self,
        *,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        batch_size_per_image: int,
        positive_fraction: float,
        add_gt_proposals: bool = True,
    ) -> None:
        self.matcher = Matcher(high=fg_iou_thresh, low=bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction)
        self.add_gt_proposals = add_gt_proposals

    def __call__(self, proposals: list[Proposals], targets: list[Targets]) -> list[SampledProposals]:
        """Sample every image: ``proposals`` and ``targets`` in resized pixels; crowd objects are left out."""
        return [self._per_image(p, t.without_crowd()) for p, t in zip(proposals, targets)]

    def _per_image(self, proposals: Proposals, gt: Targets) -> SampledProposals:
        proposal_boxes = proposals.boxes.detach()
        if self.add_gt_proposals:
            proposal_boxes = torch.cat([proposal_boxes, gt.boxes.to(proposal_boxes.dtype)])
        if len(gt) == 0:
            matches = torch.full((proposal_boxes.shape[0],), Matcher.BELOW_LOW, device=proposal_boxes.device)
        else:
            matches = self.matcher(box_iou(gt.boxes, proposal_boxes))  # (R,) object index, BELOW_LOW or BETWEEN
        matched = matches >= 0
        gt_index = torch.where(matched, matches, 0)
        # the balanced sampler's labels: 1 object, 0 background, -1 never sampled
        pos, neg = self.sampler(torch.where(matched, 1, torch.where(matches == Matcher.BETWEEN, -1, 0)))
        keep = torch.cat([pos, neg])
        gt_index, matched = gt_index[keep], matched[keep]
        if len(gt) == 0:
            return SampledProposals(
                proposal_boxes=proposal_boxes[keep],
                gt_labels=torch.full_like(gt_index, SampledProposals.BACKGROUND),
                gt_boxes=proposal_boxes.new_zeros((keep.numel(), 4)),
                gt_index=gt_index,
            )
        return SampledProposals(
            proposal_boxes=proposal_boxes[keep],
            gt_labels=torch.where(matched, gt.labels[gt_index], SampledProposals.BACKGROUND),
            gt_boxes=torch.where(matched[:, None], gt.boxes[gt_index], 0.0),
            gt_index=gt_index,
        )
