"""Single-stage detectors: preprocess -> backbone -> dense head -> post-process, no proposals.

:func:`build_single_stage` is registered as detector ``single_stage``
(``model.type: single_stage``); it builds ``model.backbone`` and ``model.dense_head``
from the registry and maps the fixed ``model.preprocess`` and ``model.postprocess``
sections to this module's :class:`FixedSizeResize` and :class:`SingleShotPostProcess`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit import ConfigError
from detkit.detectors import DenseDetector, build_backbone_and_neck
from detkit.ops import batched_nms, clip_boxes, remove_small_boxes, scale_boxes
from detkit.plugins import ComponentRegistry
from detkit.stages import PostProcess, Preprocess
from detkit.structures import Detections, ImageBatch, Targets

Losses = dict[str, Tensor]


class FixedSizeResize(Preprocess):
    """Normalize, then resize every image to exactly ``size`` (aspect ratio not kept), as SSD.

    Matches torchvision's ``GeneralizedRCNNTransform(fixed_size=...)``: normalization
    before a bilinear resize (``align_corners=False``). The batch is padded to a
    multiple of ``size_divisible`` only if ``size`` is not one already.

    Args:
        size: ``(height, width)`` of every resized image.
        size_divisible: pad the batch to a multiple of this.
        pixel_mean, pixel_std: per-channel normalization of ``[0, 1]`` RGB input.
    """

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(
        self,
        *,
        size: tuple[int, int] = (300, 300),
        size_divisible: int = 1,
        pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
        pixel_std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.size_divisible = max(1, int(size_divisible))
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    def forward(
        self, images: list[Tensor], targets: list[Targets] | None = None
    ) -> tuple[ImageBatch, list[Targets] | None]:
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        resized = [self._resize(self._normalize(im)) for im in images]  # N x (3, h, w)
        if targets is not None:
            targets = [self._resize_targets(t, o) for t, o in zip(targets, original_sizes)]
        batch = torch.stack(resized)  # (N, 3, h, w)
        height, width = (math.ceil(s / self.size_divisible) * self.size_divisible for s in self.size)
        if (height, width) != self.size:
            batch = F.pad(batch, (0, width - self.size[1], 0, height - self.size[0]))
        mean = tuple(float(v) for v in self.pixel_mean.flatten())
        std = tuple(float(v) for v in self.pixel_std.flatten())
        return ImageBatch(batch, [self.size] * len(images), original_sizes, mean, std, list(images)), targets

    def _normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            raise TypeError(f"images must be float tensors in [0, 1], got {image.dtype}")
        return (image - self.pixel_mean) / self.pixel_std

    def _resize(self, image: Tensor) -> Tensor:
        return F.interpolate(image[None], size=list(self.size), mode="bilinear", align_corners=False)[0]

    def _resize_targets(self, targets: Targets, original: tuple[int, int]) -> Targets:
        masks = targets.masks
        if masks is not None and masks.numel() > 0:
            masks = F.interpolate(masks[:, None].float(), size=self.size, mode="nearest")[:, 0].to(masks.dtype)
        elif masks is not None:
            masks = masks.new_zeros((0, *self.size))
        return targets.replace(boxes=scale_boxes(targets.boxes, original, self.size), masks=masks)


class SingleShotPostProcess(PostProcess):
    """Clip, score threshold, drop tiny boxes, class-wise NMS, top-k, rescale to the original image.

    Args:
        score_thresh: detections scoring at or below this are dropped.
        nms_thresh: IoU threshold of the class-wise NMS.
        detections_per_img: detections kept per image (highest scores).
        min_box_size: boxes narrower or shorter than this (resized pixels) are dropped;
            0 keeps every box (as torchvision's SSD).
    """

    def __init__(
        self,
        *,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        detections_per_img: int = 200,
        min_box_size: float = 0.0,
    ) -> None:
        super().__init__()
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_box_size = min_box_size

    def forward(self, detections: list[Detections], images: ImageBatch) -> list[Detections]:
        return [
            self._per_image(d, size, original)
            for d, size, original in zip(detections, images.image_sizes, images.original_sizes)
        ]

    def _per_image(self, dets: Detections, size: tuple[int, int], original: tuple[int, int]) -> Detections:
        dets = dets.replace(boxes=clip_boxes(dets.boxes, size))
        dets = dets[dets.scores > self.score_thresh]
        if self.min_box_size > 0:
            dets = dets[remove_small_boxes(dets.boxes, self.min_box_size)]
        keep = batched_nms(dets.boxes, dets.scores, dets.labels, self.nms_thresh)
        dets = dets[keep[: self.detections_per_img]]
        return dets.replace(boxes=scale_boxes(dets.boxes, size, original))


class SingleStageDetector(DenseDetector):
    """Dense prediction on image features, no proposals: SSD (and grid detectors like YOLO).

    ``forward`` as :class:`~detkit.detectors.DenseDetector`'s: preprocess, features,
    dense head, post-process (skipped in training).
    """

    def forward(
        self, images: list[Tensor], targets: list[Targets] | None = None
    ) -> tuple[list[Detections], Losses]:
        if self.training and targets is None:
            raise ValueError("a detector in training mode needs targets")
        batch, targets = self.preprocess(images, targets)
        features = self.extract_features(batch.tensor)
        raw, losses = self.dense_head(batch, features, targets)
        detections = raw if self.training else self.postprocess(raw, batch)
        return detections, losses


def build_single_stage(model: Mapping[str, Any], registry: ComponentRegistry, *, num_classes: int) -> nn.Module:
    """Build a :class:`SingleStageDetector` from the ``model`` config section.

    ``model.preprocess``: every image is resized to the square ``min_size`` x ``min_size``
    (``max_size`` must equal it). ``model.neck`` is built when set (SSD sets it to
    null); ``model.proposer``, ``model.region_extractor`` and ``model.roi_head`` are not used.
    """
    pre = model["preprocess"]
    if not isinstance(pre["min_size"], int) or pre["min_size"] != pre["max_size"]:
        raise ConfigError(
            "model.preprocess: the single_stage detector resizes to a fixed square; "
            f"set min_size and max_size to one number (got {pre['min_size']!r} and {pre['max_size']!r})"
        )
    if not model.get("dense_head"):
        raise ConfigError("model.dense_head: the single_stage detector needs a dense head (e.g. {name: ssd})")
    backbone, neck = build_backbone_and_neck(model, registry)
    dense_head = registry.build(
        "dense_head", model["dense_head"], key="model.dense_head",
        in_channels=list((neck or backbone).out_channels.values()), num_classes=num_classes,
    )
    post = model["postprocess"]
    return SingleStageDetector(
        preprocess=FixedSizeResize(
            size=(pre["min_size"], pre["min_size"]), size_divisible=pre["size_divisible"],
            pixel_mean=pre["pixel_mean"], pixel_std=pre["pixel_std"],
        ),
        backbone=backbone,
        neck=neck,
        dense_head=dense_head,
        postprocess=SingleShotPostProcess(
            score_thresh=post["score_thresh"], nms_thresh=post["nms_thresh"],
            detections_per_img=post["detections_per_img"], min_box_size=post["min_box_size"],
        ),
    )


__all__ = ["FixedSizeResize", "SingleShotPostProcess", "SingleStageDetector", "build_single_stage"]
