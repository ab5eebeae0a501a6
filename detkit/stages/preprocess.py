"""Normalize, resize (shorter side to ``min_size``, longer side at most ``max_size``; or to a fixed size), pad.

Resizing is bilinear, exactly as torchvision's ``GeneralizedRCNNTransform`` (with
``recompute_scale_factor`` when the aspect ratio is kept, to an explicit size with
``fixed_size``, as its SSD), so that imported torchvision weights see the same pixels.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from detkit.ops import scale_boxes
from detkit.stages.base import Preprocess
from detkit.structures import ImageBatch, Targets


class ResizeNormalize(Preprocess):
    """The preprocessing of every detector: normalize, resize, pad into one batch.

    Args:
        min_size: target shorter side; a list picks one at random per batch in
            training (scale jitter) and uses the last at inference.
        max_size: cap on the longer side.
        size_divisible: pad the batch to a multiple of this (the coarsest stride).
        pixel_mean, pixel_std: per-channel normalization of ``[0, 1]`` RGB input.
        fixed_size: ``(height, width)``: resize every image to exactly this, the
            aspect ratio not kept (SSD, YOLO); ``min_size`` and ``max_size`` are then
            unused. ``None`` keeps the aspect ratio (the R-CNN family).
    """

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(
        self,
        *,
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
        size_divisible: int = 32,
        pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
        pixel_std: Sequence[float] = (0.229, 0.224, 0.225),
        fixed_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.min_sizes = [int(min_size)] if isinstance(min_size, int) else [int(s) for s in min_size]
        self.max_size = max_size
        self.size_divisible = max(1, int(size_divisible))
        self.fixed_size = (int(fixed_size[0]), int(fixed_size[1])) if fixed_size is not None else None
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    def forward(
        self, images: list[Tensor], targets: list[Targets] | None = None
    ) -> tuple[ImageBatch, list[Targets] | None]:
        min_size = random.choice(self.min_sizes) if self.training else self.min_sizes[-1]
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        resized = [self._resize(self._normalize(im), min_size) for im in images]
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in resized]
        if targets is not None:
            targets = [self._resize_targets(t, o, s) for t, o, s in zip(targets, original_sizes, sizes)]
        mean = tuple(float(v) for v in self.pixel_mean.flatten())
        std = tuple(float(v) for v in self.pixel_std.flatten())
        return ImageBatch(self._pad(resized), sizes, original_sizes, mean, std, list(images)), targets

    def _normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            raise TypeError(f"images must be float tensors in [0, 1], got {image.dtype}")
        return (image - self.pixel_mean) / self.pixel_std

    def _scale(self, height: int, width: int, min_size: int) -> float:
        return min(min_size / min(height, width), self.max_size / max(height, width))

    def _resize(self, image: Tensor, min_size: int) -> Tensor:
        if self.fixed_size is not None:
            return F.interpolate(image[None], size=list(self.fixed_size), mode="bilinear", align_corners=False)[0]
        scale = self._scale(image.shape[-2], image.shape[-1], min_size)
        return F.interpolate(
            image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
        )[0]

    def _resize_targets(self, targets: Targets, original: tuple[int, int], size: tuple[int, int]) -> Targets:
        masks = targets.masks
        if masks is not None and masks.numel() > 0:
            masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].to(masks.dtype)
        elif masks is not None:
            masks = masks.new_zeros((0, *size))
        return targets.replace(boxes=scale_boxes(targets.boxes, original, size), masks=masks)

    def _pad(self, images: list[Tensor]) -> Tensor:
        stride = float(self.size_divisible)
        max_h = int(math.ceil(max(im.shape[-2] for im in images) / stride) * stride)
        max_w = int(math.ceil(max(im.shape[-1] for im in images) / stride) * stride)
        batch = images[0].new_zeros((len(images), images[0].shape[0], max_h, max_w))
        for i, im in enumerate(images):  # indexing the batch (not views of it) keeps autograd happy
            batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
        return batch
