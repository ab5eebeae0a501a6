"""The Region Proposal Network as a detkit proposer.

Shape glossary: N images, L levels, A anchors per location, Hi/Wi level size,
M_i = Hi * Wi * A anchors of level i, M = sum M_i, G ground-truth boxes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from detkit import ConfigError
from detkit.ops import (
    BalancedSampler,
    BoxCoder,
    Matcher,
    at_least_float32,
    batched_nms,
    box_ioa,
    box_iou,
    clip_boxes,
    level_strides,
    remove_small_boxes,
)
from detkit.stages import Losses, Proposer
from detkit.structures import FeatureMaps, ImageBatch, Proposals, Targets
from detkit_rpn.anchors import AnchorGenerator
from detkit_rpn.head import RPNHead


class RPN(Proposer):
    """Region Proposal Network.

    Args:
        in_channels: channels of the feature maps (set by the detector builder).
        in_features: feature names to use, finest first (default: every map the neck gives).
        in_strides: feature name -> stride of every map the backbone or neck gives, finest
            first, when the detector builder passes it: a level count that does not match
            ``anchor_sizes`` is then an error at build time instead of at the first forward.
        anchor_sizes: per level (one tuple per feature map used, finest first), anchor
            sizes in input pixels.
        aspect_ratios: anchor height / width ratios (all levels).
        num_convs: 3x3 convs in the head.
        pre_nms_top_n_train, pre_nms_top_n_test: best-scoring anchors kept per level before NMS.
        post_nms_top_n_train, post_nms_top_n_test: proposals kept per image after NMS.
        nms_thresh: IoU threshold of the per-level NMS.
        min_size: proposals narrower or shorter than this (pixels) are dropped.
        score_thresh: proposals with a lower objectness probability are dropped.
        fg_iou_thresh, bg_iou_thresh: anchor matching thresholds.
        batch_size_per_image, positive_fraction: anchors sampled per image for the loss.
        smooth_l1_beta: beta of the box regression loss.
    """

    needs_features = True

    def __init__(
        self,
        *,
        in_channels: int,
        in_features: Sequence[str] | None = None,
        in_strides: Mapping[str, int] | None = None,
        anchor_sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        num_convs: int = 1,
        pre_nms_top_n_train: int = 2000,
        pre_nms_top_n_test: int = 1000,
        post_nms_top_n_train: int = 2000,
        post_nms_top_n_test: int = 1000,
        nms_thresh: float = 0.7,
        min_size: float = 1e-3,
        score_thresh: float = 0.0,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        smooth_l1_beta: float = 1.0 / 9,
    ) -> None:
        super().__init__()
        self.in_features = list(in_features) if in_features is not None else None
        self.anchor_sizes = [list(sizes) for sizes in anchor_sizes]
        self.anchor_generator = AnchorGenerator(sizes=anchor_sizes, aspect_ratios=aspect_ratios)
        if in_strides is not None and self.in_features is not None:
            unknown = [k for k in self.in_features if k not in in_strides]
            if unknown:
                raise ConfigError(
                    f"model.proposer.in_features names {', '.join(unknown)}, which the backbone/neck does not "
                    f"give; choose among {', '.join(in_strides)}"
                )
        if self.in_features is not None or in_strides is not None:
            # the maps read are known before any image: check the level count now
            self._check_levels(self.in_features if self.in_features is not None else list(in_strides or {}))
        num_anchors = set(self.anchor_generator.num_anchors_per_location())
        if len(num_anchors) != 1:
            raise ValueError("every level must have the same number of anchors per location")
        self.head = RPNHead(in_channels=in_channels, num_anchors=num_anchors.pop(), num_convs=num_convs)
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(high=fg_iou_thresh, low=bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction)
        self.pre_nms_top_n = {"train": pre_nms_top_n_train, "test": pre_nms_top_n_test}
        self.post_nms_top_n = {"train": post_nms_top_n_train, "test": post_nms_top_n_test}
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.score_thresh = score_thresh
        self.smooth_l1_beta = smooth_l1_beta

    def forward(
        self, images: ImageBatch, features: FeatureMaps | None, targets: list[Targets] | None = None
    ) -> tuple[list[Proposals], Losses]:
        assert features is not None, "RPN needs feature maps"
        names = self.in_features or features.names()
        self._check_levels(names)
        maps = [features[k] for k in names]
        pred_logits_per_level, pred_deltas_per_level = self.head(maps)
        anchors_per_level = self._anchors(images, maps)
        num_anchors_per_level = [a.shape[0] for a in anchors_per_level]
        pred_logits = torch.cat([_flatten(x, 1) for x in pred_logits_per_level], dim=1)[..., 0]  # (N, M)
        pred_deltas = torch.cat([_flatten(x, 4) for x in pred_deltas_per_level], dim=1)  # (N, M, 4)
        anchors = torch.cat(anchors_per_level)  # (M, 4)

        num_images = len(images)
        # (N * M, 4) deltas on (N * M, 4) anchors -> (N, M, 4) boxes
        pred_boxes = self.box_coder.decode(pred_deltas.detach().reshape(-1, 4), anchors.repeat(num_images, 1))
        pred_boxes = pred_boxes.view(num_images, -1, 4)
        proposals = self._select(pred_boxes, pred_logits.detach(), images.image_sizes, num_anchors_per_level)

        losses: Losses = {}
        if self.training and targets is not None:
            losses = self._losses(anchors, pred_logits, pred_deltas, targets)
        return proposals, losses

    def _check_levels(self, names: Sequence[str]) -> None:
        """Raise a :class:`ConfigError` unless there is one anchor size tuple per feature map in ``names``."""
        num_sizes, num_maps = self.anchor_generator.num_levels, len(names)
        if num_sizes == num_maps:
            return
        if self.in_features is not None:
            source, alternative = "model.proposer.in_features selects", ""
        else:
            source = "the backbone/neck (model.backbone, model.neck) gives"
            alternative = ""
            if num_sizes < num_maps:
                alternative = f", or choose {num_sizes} of the maps with model.proposer.in_features"
        raise ConfigError(
            f"model.proposer.anchor_sizes has {num_sizes} size tuples but {source} {num_maps} feature maps "
            f"({', '.join(names)}); give one size tuple per feature map, finest first, e.g. "
            f"model.proposer.anchor_sizes={_format_sizes(_sizes_for_levels(self.anchor_sizes, num_maps))}{alternative}"
        )

    def _anchors(self, images: ImageBatch, maps: list[Tensor]) -> list[Tensor]:
        padded_size = (int(images.tensor.shape[-2]), int(images.tensor.shape[-1]))
        grid_sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        return self.anchor_generator(grid_sizes, level_strides(grid_sizes, padded_size), images.tensor.device)

    def _select(
        self, pred_boxes: Tensor, pred_logits: Tensor, image_sizes: list[tuple[int, int]],
        num_anchors_per_level: list[int],
    ) -> list[Proposals]:
        """Per-level top-k, clip, drop small, per-level NMS, top-k per image.

        ``pred_boxes (N, M, 4)`` decoded from every anchor, ``pred_logits (N, M)`` their objectness.
        """
        mode = "train" if self.training else "test"
        top_idx, levels = [], []
        offset = 0
        for level, level_logits in enumerate(pred_logits.split(num_anchors_per_level, dim=1)):
            k = min(self.pre_nms_top_n[mode], level_logits.shape[1])
            _, idx = level_logits.topk(k, dim=1)  # (N, k)
            top_idx.append(idx + offset)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=pred_logits.device))
            offset += level_logits.shape[1]
        idx = torch.cat(top_idx, dim=1)  # (N, K)
        level_ids = torch.cat(levels)  # (K,)
        image_range = torch.arange(len(image_sizes), device=pred_logits.device)[:, None]
        scores = torch.sigmoid(at_least_float32(pred_logits[image_range, idx]))  # (N, K), float32 under autocast too
        top_boxes = pred_boxes[image_range, idx]  # (N, K, 4)

        proposals = []
        for boxes_i, scores_i, size in zip(top_boxes, scores, image_sizes):
            boxes_i = clip_boxes(boxes_i, size)
            keep = remove_small_boxes(boxes_i, self.min_size)
            keep = keep[scores_i[keep] >= self.score_thresh]
            boxes_i, scores_i, level_i = boxes_i[keep], scores_i[keep], level_ids[keep]
            keep = batched_nms(boxes_i, scores_i, level_i, self.nms_thresh)[: self.post_nms_top_n[mode]]
            proposals.append(Proposals(boxes=boxes_i[keep], objectness=scores_i[keep]))
        return proposals

    def _label_anchors(self, anchors: Tensor, targets: Targets) -> tuple[Tensor, Tensor]:
        """``gt_labels (M,)`` (1 object, 0 background, -1 ignore) and the matched ``gt_boxes (M, 4)``."""
        gt = targets.without_crowd()
        if len(gt) == 0:
            return anchors.new_zeros(anchors.shape[0]), torch.zeros_like(anchors)
        matches = self.matcher(box_iou(gt.boxes, anchors))  # (M,)
        gt_boxes = gt.boxes[matches.clamp(min=0)]
        gt_labels = (matches >= 0).to(anchors.dtype)
        gt_labels[matches == Matcher.BETWEEN] = -1
        if targets.iscrowd is not None and bool(targets.iscrowd.any()):
            # anchors mostly inside a crowd region are neither object nor background
            crowd = targets.boxes[targets.iscrowd.bool()]
            inside = box_ioa(anchors, crowd).max(dim=1).values > 0.5
            gt_labels[inside & (gt_labels == 0)] = -1
        return gt_labels, gt_boxes

    def _losses(self, anchors: Tensor, pred_logits: Tensor, pred_deltas: Tensor, targets: list[Targets]) -> Losses:
        """Objectness BCE and smooth-L1 box loss on a balanced sample of anchors per image.

        ``anchors (M, 4)``, ``pred_logits (N, M)``, ``pred_deltas (N, M, 4)``; both terms are
        divided by the number of sampled anchors.
        """
        pos_idx_per_image, sampled_idx_per_image, gt_objectness, gt_deltas = [], [], [], []
        for i, targets_per_image in enumerate(targets):
            gt_labels, gt_boxes = self._label_anchors(anchors, targets_per_image)
            pos, neg = self.sampler(gt_labels)
            base = i * anchors.shape[0]  # index of image i's first anchor in the flattened batch
            pos_idx_per_image.append(pos + base)
            sampled_idx_per_image.append(torch.cat([pos, neg]) + base)
            gt_objectness.append(torch.cat([gt_labels[pos], gt_labels[neg]]))
            gt_deltas.append(self.box_coder.encode(gt_boxes[pos], anchors[pos]))
        pos_idx = torch.cat(pos_idx_per_image)
        sampled_idx = torch.cat(sampled_idx_per_image)
        num_sampled = max(sampled_idx.numel(), 1)
        box_loss = F.smooth_l1_loss(
            pred_deltas.reshape(-1, 4)[pos_idx],  # (N, M, 4) -> (N * M, 4)
            torch.cat(gt_deltas),
            beta=self.smooth_l1_beta,
            reduction="sum",
        )
        obj_loss = F.binary_cross_entropy_with_logits(
            pred_logits.reshape(-1)[sampled_idx], torch.cat(gt_objectness), reduction="sum"  # (N, M) -> (N * M,)
        )
        return {"loss_rpn_objectness": obj_loss / num_sampled, "loss_rpn_box": box_loss / num_sampled}


def _sizes_for_levels(sizes: list[list[float]], num_levels: int) -> list[list[float]]:
    """``sizes`` cut or extended to ``num_levels`` tuples, each added level doubling the last (strides double)."""
    out = [list(s) for s in sizes[:num_levels]] or [[32.0]]
    while len(out) < num_levels:
        out.append([2 * s for s in out[-1]])
    return out[:num_levels]


def _format_sizes(sizes: list[list[float]]) -> str:
    """``[[8.0], [16.0, 20.0]]`` -> ``'[[8], [16, 20]]'``, as a config override would write it."""
    return "[" + ", ".join("[" + ", ".join(f"{s:g}" for s in level) + "]" for level in sizes) + "]"


def _flatten(x: Tensor, channels: int) -> Tensor:
    """Head output ``(N, A * C, H, W)`` -> ``(N, H * W * A, C)``, matching the anchor order."""
    n, _, h, w = x.shape
    x = x.view(n, -1, channels, h, w)  # (N, A, C, H, W)
    return x.permute(0, 3, 4, 1, 2).reshape(n, -1, channels)  # (N, H, W, A, C) -> (N, H*W*A, C)

