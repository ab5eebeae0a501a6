"""The OverFeat dense head: a window classifier evaluated convolutionally (Sermanet et al., 2014).

OverFeat ("OverFeat: Integrated Recognition, Localization and Detection using
Convolutional Networks", ICLR 2014) turns a classifier of fixed-size windows into a
detector by sliding it over the image, and makes the sliding free: the classifier's
fully connected layers are convolutions. The first "FC" layer, which reads a
``k x k x C`` crop of the feature map, is a ``k x k`` convolution without padding;
the later FC layers are ``1 x 1`` convolutions. Run on a larger feature map, the same
weights give one prediction per location, each exactly the classifier's output on
that location's crop, and the overlapping windows share the backbone's computation.
Every location predicts ``K + 1`` class scores (0 is background) and the four deltas
(detkit's :class:`~detkit.ops.BoxCoder`) from its window to the object's box; the
regressor is class-agnostic here. Several window sizes come from an image pyramid:
the head asks for it with :meth:`OverFeatHead.image_scales`, the detector runs the
backbone once per scale and hands every level over in one ``FeatureMaps``, and
:meth:`OverFeatHead.predict` maps each level's windows back to the batch's pixels.

Geometry (:meth:`OverFeatHead.windows`): the feature map has stride ``S`` and the
window covers ``k = window_size / S`` cells. A cell ``j`` of a padded ResNet is centred
on input pixel ``j * S``, so the location whose crop starts at cell ``(y, x)`` is the
square window of side ``window_size`` centred on ``((x + (k - 1) / 2) S, (y + (k - 1) / 2) S)``
of the input of the backbone; at pyramid scale ``s`` that is a window of
``window_size / s`` pixels of the resized image.

Training (:meth:`OverFeatHead.loss`): the windows of all scales of a step are matched
to the non-crowd ground truth by IoU (at least ``fg_iou``: positive, with the object's
class; below ``bg_iou``: background; between: ignored; with
``allow_low_quality_matches`` every object also claims its best windows, so that no
object is left without a positive); windows lying mostly (intersection over the
window's area > 0.5) inside a crowd region and background, and windows centred
outside the image (on padding), are ignored. Each image contributes a balanced
sample (``batch_size_per_image``, ``positive_fraction``) to a cross-entropy, and its
positives to a smooth-L1 box loss divided by the number of positives.

Inference (:meth:`OverFeatHead.detections`): softmax scores of every (location,
class) pair, the ``topk_candidates`` best per image with their decoded, clipped
boxes, as raw detections for the post-processing.

Shape glossary: N images, C channels of the feature map, Hf x Wf its size,
k the window side in cells, Ho x Wo = (Hf - k + 1) x (Wf - k + 1) locations,
L locations of all scales, K classes (logits have K + 1), G objects.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.ops import BalancedSampler, BoxCoder, Matcher, box_ioa, box_iou, clip_boxes
from detkit.stages import ClassRows, DenseHead, Losses, no_detections
from detkit.structures import Detections, FeatureMaps, ImageBatch, Targets


def window_boxes(map_size: tuple[int, int], *, stride: int, cells: int, device: torch.device | None = None) -> Tensor:
    """The window of every location of a valid ``cells x cells`` convolution over a feature map.

    Args:
        map_size: ``(Hf, Wf)`` of the feature map.
        stride: its stride ``S`` in input pixels.
        cells: the kernel side ``k``.

    Returns:
        ``(Ho * Wo, 4)`` xyxy float32 in input pixels, row-major over locations: location
        ``(y, x)`` is the square of side ``k S`` centred on ``((x + (k - 1) / 2) S, (y + (k - 1) / 2) S)``.
    """
    out_h, out_w = max(map_size[0] - cells + 1, 0), max(map_size[1] - cells + 1, 0)
    side = float(cells * stride)
    offset = (cells - 1) / 2.0 * stride - side / 2.0  # top-left of location 0
    ys = torch.arange(out_h, dtype=torch.float32, device=device) * stride + offset  # (Ho,)
    xs = torch.arange(out_w, dtype=torch.float32, device=device) * stride + offset  # (Wo,)
    y1, x1 = torch.meshgrid(ys, xs, indexing="ij")  # (Ho, Wo) each
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=-1).reshape(-1, 4)  # (Ho, Wo, 4) -> (Ho*Wo, 4)


def label_windows(
    windows: Tensor,
    targets: Targets,
    image_size: tuple[int, int],
    *,
    matcher: Matcher,
    crowd_ioa: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Label every window of one image for training.

    Args:
        windows: ``(L, 4)`` xyxy in the image's (resized) pixels.
        targets: the image's ground truth (``iscrowd`` optional).
        image_size: ``(h, w)``; windows centred outside it are ignored.
        matcher: IoU thresholds (``high`` = fg_iou, ``low`` = bg_iou).
        crowd_ioa: background windows whose intersection with a crowd box covers more
            than this fraction of the window are ignored.

    Returns:
        ``labels (L,)`` int64: ``c + 1`` for class ``c``, 0 background, -1 ignored;
        ``gt_index (L,)`` int64: the matched object's index in ``targets`` (valid where
        ``labels >= 1``; indices into ``targets`` including crowd objects).
    """
    num = windows.shape[0]
    crowd = (
        targets.iscrowd.bool().to(windows.device)
        if targets.iscrowd is not None
        else torch.zeros(len(targets), dtype=torch.bool, device=windows.device)
    )
    keep = torch.where(~crowd)[0]
    gt_boxes = targets.boxes.to(windows.device)
    labels = torch.zeros(num, dtype=torch.int64, device=windows.device)
    gt_index = torch.zeros(num, dtype=torch.int64, device=windows.device)
    if num == 0:  # the image is smaller than one window at this scale
        return labels, gt_index
    matches = matcher(box_iou(gt_boxes[keep], windows))  # (L,) index into keep, or -1 / -2
    fg = matches >= 0
    gt_index[fg] = keep[matches[fg]]
    labels[fg] = targets.labels.to(windows.device)[gt_index[fg]] + 1
    labels[matches == Matcher.BETWEEN] = -1
    if bool(crowd.any()):
        ioa = box_ioa(windows, gt_boxes[crowd])  # (L, Gc)
        labels[(labels == 0) & (ioa > crowd_ioa).any(dim=1)] = -1
    centres = (windows[:, :2] + windows[:, 2:]) / 2  # (L, 2) as (x, y)
    outside = (centres[:, 0] >= image_size[1]) | (centres[:, 1] >= image_size[0])
    labels[outside] = -1
    return labels, gt_index


class OverFeatHead(DenseHead):
    """A window classifier and box regressor whose fully connected layers are convolutions.

    Layers: ``k x k`` conv (``in_channels -> fc_channels[0]``, no padding, the first
    "FC") + ReLU, then ``1 x 1`` convs + ReLU for the other ``fc_channels``, then two
    ``1 x 1`` predictors: ``K + 1`` class logits and 4 box deltas per location.

    ``forward(images, features, targets=None) -> (list[Detections], losses)`` runs the
    head on every pyramid level of its feature map (:meth:`predict`, windows in
    ``images``' pixels), then, at inference, gives raw detections (at most
    ``topk_candidates`` per image); in training, no detections and
    ``loss_overfeat_cls``, ``loss_overfeat_box`` over the locations of all levels.

    Args:
        in_channels: channels of every feature map, finest first (passed by the detector builder).
        in_strides: stride of every feature map (passed by the detector builder).
        in_features: name of every feature map (passed by the detector builder).
        num_classes: K, without background (passed by the detector builder).
        in_feature: the feature map the head reads; ``None`` takes the last (coarsest).
        window_size: window side in input pixels of the backbone; a multiple of the
            feature stride (the kernel then covers ``window_size / stride`` cells).
        scales: the image pyramid: the detector resizes the batch by each factor, so
            the windows are ``window_size / s`` pixels of the resized image.
        train_scales: ``"all"`` trains on every scale at every step; ``"random"`` on one
            scale drawn per step (cheaper steps, fewer positives each).
        fc_channels: widths of the "FC" layers (convolutions), at least one.
        fg_iou: IoU at or above which a window is positive.
        bg_iou: IoU below which a window is background (between the two: ignored).
        allow_low_quality_matches: every object also claims the windows it overlaps best.
        batch_size_per_image: windows sampled per image for the classification loss.
        positive_fraction: target share of positives in that sample.
        box_coder_weights: ``(wx, wy, ww, wh)`` of the box deltas.
        smooth_l1_beta: beta of the box regression loss.
        topk_candidates: raw detections kept per image at inference ((location, class) pairs).
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        in_features: Sequence[str],
        num_classes: int,
        in_feature: str | None = None,
        window_size: int = 64,
        scales: Sequence[float] = (2.0, 1.0, 0.5),
        train_scales: str = "all",
        fc_channels: Sequence[int] = (512, 512),
        fg_iou: float = 0.5,
        bg_iou: float = 0.4,
        allow_low_quality_matches: bool = True,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.25,
        box_coder_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        smooth_l1_beta: float = 1.0 / 9,
        topk_candidates: int = 1000,
    ) -> None:
        super().__init__()
        names = list(in_features)
        if not names:
            raise ValueError("the backbone gives no feature map")
        self.in_feature = names[-1] if in_feature is None else in_feature
        if self.in_feature not in names:
            raise ValueError(f"in_feature {in_feature!r} is not a feature map of the backbone; it gives {names}")
        level = names.index(self.in_feature)
        stride = int(in_strides[level])
        if int(window_size) <= 0 or int(window_size) % stride:
            raise ValueError(
                f"window_size must be a positive multiple of the stride {stride} of {self.in_feature!r}, "
                f"got {window_size}"
            )
        if not scales or any(float(s) <= 0 for s in scales):
            raise ValueError(f"scales must be positive image scale factors, got {list(scales)}")
        if train_scales not in ("all", "random"):
            raise ValueError(f"train_scales must be 'all' or 'random', got {train_scales!r}")
        if not fc_channels or any(int(c) <= 0 for c in fc_channels):
            raise ValueError(f"fc_channels must list at least one positive width, got {list(fc_channels)}")
        if not 0 <= bg_iou <= fg_iou <= 1:
            raise ValueError(f"need 0 <= bg_iou <= fg_iou <= 1, got bg_iou={bg_iou}, fg_iou={fg_iou}")
        if len(box_coder_weights) != 4:
            raise ValueError(f"box_coder_weights must be four numbers, got {list(box_coder_weights)}")
        self.num_classes = int(num_classes)
        self.stride = stride
        self.cells = int(window_size) // stride
        self.window_size = int(window_size)
        self.scales = [float(s) for s in scales]
        self.train_scales = train_scales
        widths = [int(in_channels[level]), *(int(c) for c in fc_channels)]
        layers: list[nn.Module] = [nn.Conv2d(widths[0], widths[1], kernel_size=self.cells), nn.ReLU(inplace=True)]
        for c_in, c_out in itertools.pairwise(widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=1), nn.ReLU(inplace=True)]
        self.fc = nn.Sequential(*layers)  # the classifier's hidden FC layers, as convolutions
        self.cls_logits = nn.Conv2d(widths[-1], self.num_classes + 1, kernel_size=1)
        self.bbox_deltas = nn.Conv2d(widths[-1], 4, kernel_size=1)
        for m in self.fc.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.normal_(self.bbox_deltas.weight, std=0.001)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                nn.init.zeros_(m.bias)
        wx, wy, ww, wh = (float(w) for w in box_coder_weights)
        self.box_coder = BoxCoder(weights=(wx, wy, ww, wh))
        self.matcher = Matcher(high=fg_iou, low=bg_iou, allow_low_quality_matches=allow_low_quality_matches)
        self.sampler = BalancedSampler(batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.topk_candidates = int(topk_candidates)

    # ------------------------------------------------------------------ the contract

    def class_rows(self) -> dict[str, ClassRows]:
        """The window classifier's K + 1 channels (background first)."""
        return {"cls_logits.weight": ClassRows(background=True), "cls_logits.bias": ClassRows(background=True)}

    def forward(
        self, images: ImageBatch, features: FeatureMaps, targets: list[Targets] | None = None
    ) -> tuple[list[Detections], Losses]:
        pred_logits, pred_deltas, windows = self.predict(features)
        if self.training:
            if targets is None:
                raise ValueError("OverFeatHead needs targets in training")
            return no_detections(images), self.loss(pred_logits, pred_deltas, windows, targets, images.image_sizes)
        return self.detections(pred_logits, pred_deltas, windows, images.image_sizes), {}

    def image_scales(self) -> list[float]:
        """The pyramid: every scale at inference; in training one at random with ``train_scales: random``."""
        if self.training and self.train_scales == "random":
            return [random.choice(self.scales)]
        return list(self.scales)

    # ------------------------------------------------------------------ sub-steps

    def predict(self, features: FeatureMaps) -> tuple[Tensor, Tensor, Tensor]:
        """Dense predictions on every pyramid level of the head's feature map, merged.

        Returns:
            ``logits (N, L, K+1)``, ``deltas (N, L, 4)`` and the windows ``(L, 4)`` in
            the pixels of the batch the pyramid was made from (a level's windows
            divided by its :meth:`~detkit.structures.FeatureMaps.image_scale`).
        """
        names = features.levels(self.in_feature)
        if not names:
            raise ValueError(f"OverFeatHead reads map {self.in_feature!r}; the features hold {features.names()}")
        logits_per_level, deltas_per_level, windows_per_level = [], [], []
        for name in names:
            logits, deltas, windows = self._predict_map(features[name])
            scale_y, scale_x = features.image_scale(name)
            logits_per_level.append(logits)
            deltas_per_level.append(deltas)
            windows_per_level.append(windows / windows.new_tensor([scale_x, scale_y, scale_x, scale_y]))
        return torch.cat(logits_per_level, dim=1), torch.cat(deltas_per_level, dim=1), torch.cat(windows_per_level)

    def _predict_map(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``(N, Ho*Wo, K+1)``, deltas ``(N, Ho*Wo, 4)`` and windows ``(Ho*Wo, 4)`` of one map
        ``(N, C, Hf, Wf)``, in the pixels of the input it was computed on (no location when the map
        is smaller than the window)."""
        n, _, height, width = x.shape
        if height < self.cells or width < self.cells:
            empty = x.new_zeros((n, 0, self.num_classes + 1))
            return empty, x.new_zeros((n, 0, 4)), x.new_zeros((0, 4))
        hidden = self.fc(x)  # (N, C_fc, Ho, Wo)
        logits = self.cls_logits(hidden).flatten(2).transpose(1, 2)  # (N, K+1, Ho, Wo) -> (N, Ho*Wo, K+1)
        deltas = self.bbox_deltas(hidden).flatten(2).transpose(1, 2)  # (N, 4, Ho, Wo) -> (N, Ho*Wo, 4)
        windows = window_boxes((height, width), stride=self.stride, cells=self.cells, device=x.device)
        return logits, deltas, windows.to(x.dtype)

    def classify(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        """The same layers as a plain classifier of window crops ``(R, C, k, k)``.

        Returns ``logits (R, K+1)`` and ``deltas (R, 4)``: equal to :meth:`predict` at the
        location the crop is cut from (the fully connected view of the convolutions).
        """
        x = crops.flatten(1)  # (R, C, k, k) -> (R, C*k*k)
        for layer in self.fc:
            if isinstance(layer, nn.Conv2d):
                x = F.linear(x, layer.weight.flatten(1), layer.bias)  # an FC layer with the conv's weights
            else:
                x = layer(x)
        logits = F.linear(x, self.cls_logits.weight.flatten(1), self.cls_logits.bias)
        deltas = F.linear(x, self.bbox_deltas.weight.flatten(1), self.bbox_deltas.bias)
        return logits, deltas

    def loss(
        self,
        pred_logits: Tensor,
        pred_deltas: Tensor,
        windows: Tensor,
        targets: list[Targets],
        image_sizes: list[tuple[int, int]],
    ) -> Losses:
        """Classification and box losses over the locations of every scale of a step.

        Args:
            pred_logits: ``(N, L, K+1)``.
            pred_deltas: ``(N, L, 4)``.
            windows: ``(L, 4)`` in the resized images' pixels.
            targets: ground truth per image in those pixels.
            image_sizes: ``(h, w)`` of each resized image.
        """
        cls_terms, box_terms = [], []
        num_pos = 0
        for logits, deltas, targets_per_image, size in zip(pred_logits, pred_deltas, targets, image_sizes):
            labels, gt_index = label_windows(windows, targets_per_image, size, matcher=self.matcher)
            pos_idx, neg_idx = self.sampler(labels)
            sampled = torch.cat([pos_idx, neg_idx])
            cls_terms.append(F.cross_entropy(logits[sampled], labels[sampled], reduction="sum") / max(1, len(sampled)))
            gt_boxes = targets_per_image.boxes.to(windows.device)[gt_index[pos_idx]]
            box_targets = self.box_coder.encode(gt_boxes, windows[pos_idx])
            box_terms.append(
                F.smooth_l1_loss(deltas[pos_idx], box_targets, beta=self.smooth_l1_beta, reduction="sum")
            )
            num_pos += int(pos_idx.numel())
        zero = pred_logits.sum() * 0.0 + pred_deltas.sum() * 0.0  # keeps the graph without images or positives
        if not zero.requires_grad and torch.is_grad_enabled():  # no location at all (images smaller than a window)
            zero = zero + sum((p.sum() * 0.0 for p in self.parameters()), zero)
        num_images = max(1, len(cls_terms))
        return {
            "loss_overfeat_cls": zero + sum(cls_terms, zero) / num_images,
            "loss_overfeat_box": zero + sum(box_terms, zero) / max(1, num_pos),
        }

    def detections(
        self, pred_logits: Tensor, pred_deltas: Tensor, windows: Tensor, image_sizes: list[tuple[int, int]]
    ) -> list[Detections]:
        """Raw detections: the ``topk_candidates`` best (location, class) pairs per image.

        Args: as :meth:`loss`. Locations whose window is centred outside the image
        (on padding) are dropped; boxes are decoded from their window and clipped.
        """
        results = []
        scores_batch = F.softmax(pred_logits, dim=-1)[:, :, 1:]  # (N, L, K+1) -> (N, L, K), background dropped
        centres = (windows[:, :2] + windows[:, 2:]) / 2  # (L, 2)
        for deltas, scores, size in zip(pred_deltas, scores_batch, image_sizes):
            inside = (centres[:, 0] < size[1]) & (centres[:, 1] < size[0])  # (L,)
            scores = scores * inside[:, None]  # windows on padding score 0
            flat = scores.reshape(-1)  # (L, K) -> (L*K,), location-major
            top_scores, top_idx = flat.topk(min(self.topk_candidates, flat.numel()))
            location, labels = top_idx // self.num_classes, top_idx % self.num_classes
            boxes = self.box_coder.decode(deltas[location], windows[location])[:, 0]  # (T, 1, 4) -> (T, 4)
            results.append(Detections(boxes=clip_boxes(boxes, size), scores=top_scores, labels=labels))
        return results


__all__ = ["OverFeatHead", "label_windows", "window_boxes"]
