"""The dense sliding-window detector: an image pyramid, a backbone and an OverFeat head per scale.

OverFeat (Sermanet et al., 2014) detects with one window size and many image
sizes: the batch is resized by every factor ``s`` of the head's ``scales``, the
backbone and :meth:`~detkit_sliding_window.head.OverFeatHead.predict` run once per
scale, and a location at scale ``s`` stands for a window of ``window_size / s``
pixels of the resized image. The locations of all scales are merged (windows mapped
back to the resized image) before the training losses or the raw detections, so
the balanced sample of an image and the class-wise NMS of the post-processing both
see every scale at once.

Training runs every scale at every step (``train_scales: all``) or one scale drawn at
random per step (``train_scales: random``, cheaper steps); inference always runs all.

:func:`build_sliding_window` is registered as detector ``sliding_window``
(``model.type: sliding_window``); it builds ``model.backbone``, the optional
``model.neck`` and ``model.dense_head`` from the registry and maps the fixed
``model.preprocess`` and ``model.postprocess`` sections to detkit's
:class:`~detkit.stages.preprocess.ResizeNormalize` and
:class:`~detkit.stages.postprocess.DetectionPostProcess`.

Shape glossary: N images, Hp x Wp the padded batch, L_s locations of scale s,
L = sum L_s, K classes.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit import ConfigError
from detkit.detectors import DenseDetector, build_backbone_and_neck
from detkit.plugins import ComponentRegistry
from detkit.stages.postprocess import DetectionPostProcess
from detkit.stages.preprocess import ResizeNormalize
from detkit.structures import Detections, ImageBatch, Targets
from detkit_sliding_window.head import OverFeatHead

Losses = dict[str, Tensor]


class SlidingWindowDetector(DenseDetector):
    """Preprocess -> (per pyramid scale: resize -> backbone [-> neck] -> head) -> merge -> post-process.

    ``forward`` as :class:`~detkit.detectors.DenseDetector`'s, with the losses
    ``loss_overfeat_cls`` and ``loss_overfeat_box``.
    """

    dense_head: OverFeatHead

    def forward(
        self, images: list[Tensor], targets: list[Targets] | None = None
    ) -> tuple[list[Detections], Losses]:
        if self.training and targets is None:
            raise ValueError("a detector in training mode needs targets")
        batch, targets = self.preprocess(images, targets)
        pred_logits, pred_deltas, windows = self._predict_pyramid(batch, self._scales())
        if self.training:
            assert targets is not None
            return [], self.dense_head.loss(pred_logits, pred_deltas, windows, targets, batch.image_sizes)
        raw = self.dense_head.detections(pred_logits, pred_deltas, windows, batch.image_sizes)
        return self.postprocess(raw, batch), {}

    def _scales(self) -> list[float]:
        scales = self.dense_head.scales
        if self.training and self.dense_head.train_scales == "random":
            return [random.choice(scales)]
        return list(scales)

    def _predict_pyramid(self, batch: ImageBatch, scales: list[float]) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``(N, L, K+1)``, deltas ``(N, L, 4)`` and windows ``(L, 4)`` (resized-image pixels) of all scales."""
        per_scale = [self._predict_scale(batch.tensor, s) for s in scales]
        logits, deltas, windows = zip(*per_scale)
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1), torch.cat(windows, dim=0)

    def _predict_scale(self, tensor: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
        height, width = tensor.shape[-2:]
        scaled_h, scaled_w = max(1, round(height * scale)), max(1, round(width * scale))
        if (scaled_h, scaled_w) != (height, width):
            # (N, 3, Hp, Wp) -> (N, 3, Hp * s, Wp * s)
            tensor = F.interpolate(tensor, size=(scaled_h, scaled_w), mode="bilinear", align_corners=False)
        logits, deltas, windows = self.dense_head.predict(self.extract_features(tensor))
        # windows from the scaled batch's pixels back to the resized images' pixels
        factors = windows.new_tensor([scaled_w / width, scaled_h / height] * 2)
        return logits, deltas, windows / factors


def build_sliding_window(model: Mapping[str, Any], registry: ComponentRegistry, *, num_classes: int) -> nn.Module:
    """Build a :class:`SlidingWindowDetector` from the ``model`` config section.

    ``model.dense_head`` (e.g. ``{name: overfeat, window_size: 16, scales: [2, 1, 0.5]}``)
    is built with the backbone's (or neck's) ``in_channels`` and ``in_strides`` and
    ``num_classes``; ``model.proposer``, ``model.region_extractor`` and
    ``model.roi_head`` are not used.
    """
    if not model.get("dense_head"):
        raise ConfigError(
            "model.dense_head: the sliding_window detector needs a dense head (e.g. {name: overfeat})"
        )
    backbone, neck = build_backbone_and_neck(model, registry)
    source = neck or backbone
    dense_head = registry.build(
        "dense_head", model["dense_head"], key="model.dense_head",
        in_channels=dict(source.out_channels), in_strides=dict(source.out_strides), num_classes=num_classes,
    )
    if not isinstance(dense_head, OverFeatHead):
        raise ConfigError(
            f"model.dense_head: the sliding_window detector runs an image pyramid through an OverFeat head; "
            f"{model['dense_head'].get('name')!r} is not one (use {{name: overfeat}}, or model.type: single_stage)"
        )
    return SlidingWindowDetector(
        preprocess=ResizeNormalize(**model["preprocess"]),
        backbone=backbone,
        neck=neck,
        dense_head=dense_head,
        postprocess=DetectionPostProcess(**model["postprocess"]),
    )


__all__ = ["SlidingWindowDetector", "build_sliding_window"]
