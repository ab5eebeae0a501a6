"""Region feature extraction: RoIAlign or RoI max pooling over pyramid levels, and
R-CNN's warped pixel crops.

Shape glossary: N images, R_i boxes of image i, R = sum R_i, C channels,
h x w the pooled size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import roi_pool

from detkit.ops import HALF_DTYPES, at_least_float32, box_area, multiscale_roi_align, pool_by_level, roi_align
from detkit.stages.base import RegionExtractor
from detkit.structures import FeatureMaps, ImageBatch, RegionFeatures


def assign_levels(boxes: Tensor, *, k_min: int, k_max: int, canonical_size: float = 224.0,
                  canonical_level: int = 4) -> Tensor:
    """FPN level of each box (eq. 1 of the FPN paper), as offsets from ``k_min``.

    A box of side ``canonical_size`` goes to ``canonical_level``; each halving of the
    side moves it one level finer. ``(R, 4) -> (R,)`` int64 in ``0..k_max-k_min``.
    """
    side = torch.sqrt(box_area(boxes))
    level = torch.floor(canonical_level + torch.log2(side / canonical_size) + torch.tensor(1e-6, dtype=side.dtype))
    return level.clamp(min=k_min, max=k_max).to(torch.int64) - k_min


class MultiScaleRoIAlign(RegionExtractor):
    """RoIAlign, each box reading the pyramid level its size selects.

    Args:
        in_features: level names to pool from, finest first.
        output_size: pooled ``h = w``.
        sampling_ratio: bilinear samples per bin side (0: adaptive).
        aligned: half-pixel offset correction (``False`` matches Faster R-CNN's original).
        canonical_size, canonical_level: level-assignment anchor point.
    """

    def __init__(
        self,
        *,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        output_size: int = 7,
        sampling_ratio: int = 2,
        aligned: bool = False,
        canonical_size: float = 224.0,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        self.in_features = list(in_features)
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level

    def forward(self, images: ImageBatch, features: FeatureMaps | None, boxes: list[Tensor]) -> RegionFeatures:
        assert features is not None, "RoIAlign needs feature maps"
        maps = [features[k] for k in self.in_features]
        strides = [features.strides[k] for k in self.in_features]
        num_per_image = [int(b.shape[0]) for b in boxes]
        # rois: (R, 5) rows of (image index, x1, y1, x2, y2)
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0
        )
        if len(maps) == 1:
            pooled = self._pool(maps[0], rois, strides[0])
            return RegionFeatures(pooled, num_per_image)
        levels = assign_levels(
            rois[:, 1:], k_min=int(math.log2(strides[0])), k_max=int(math.log2(strides[-1])),
            canonical_size=self.canonical_size, canonical_level=self.canonical_level,
        )
        return RegionFeatures(self._pool_levels(maps, rois, levels, strides), num_per_image)

    def _pool(self, feature: Tensor, rois: Tensor, stride: int) -> Tensor:
        return roi_align(
            feature, rois.to(_box_dtype(feature)), self.output_size, spatial_scale=1.0 / stride,
            sampling_ratio=self.sampling_ratio, aligned=self.aligned,
        )

    def _pool_levels(self, maps: list[Tensor], rois: Tensor, levels: Tensor, strides: list[int]) -> Tensor:
        return multiscale_roi_align(
            maps, rois.to(_box_dtype(maps[0])), levels, self.output_size,
            spatial_scales=[1.0 / s for s in strides], sampling_ratio=self.sampling_ratio, aligned=self.aligned,
        )


def _box_dtype(feature: Tensor) -> torch.dtype:
    """The dtype boxes are pooled with: the features', float32 for float16/bfloat16 features (autocast)."""
    return torch.float32 if feature.dtype in HALF_DTYPES else feature.dtype


class MultiScaleRoIPool(MultiScaleRoIAlign):
    """RoI max pooling (Fast R-CNN, Girshick 2015), each box reading the level its size selects.

    Each box is snapped to the feature grid and divided into ``output_size`` x
    ``output_size`` bins of whole cells; a bin's value is the maximum over its cells.
    The quantization is what RoIAlign later removed (compare the two with
    ``model.region_extractor.name``).

    Args:
        in_features: level names to pool from, finest first.
        output_size: pooled ``h = w``.
        canonical_size, canonical_level: level-assignment anchor point.
    """

    def __init__(
        self,
        *,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        output_size: int = 7,
        canonical_size: float = 224.0,
        canonical_level: int = 4,
    ) -> None:
        super().__init__(
            in_features=in_features, output_size=output_size, canonical_size=canonical_size,
            canonical_level=canonical_level,
        )

    def _pool(self, feature: Tensor, rois: Tensor, stride: int) -> Tensor:
        # torchvision has no float16/bfloat16 CPU kernel: pool those in float32, cast back
        pooled = roi_pool(at_least_float32(feature), rois.to(_box_dtype(feature)), self.output_size,
                          spatial_scale=1.0 / stride)
        return pooled.to(feature.dtype)

    def _pool_levels(self, maps: list[Tensor], rois: Tensor, levels: Tensor, strides: list[int]) -> Tensor:
        return pool_by_level(maps, rois, levels, lambda m, r, level: self._pool(m, r, strides[level]))


def context_boxes(boxes: Tensor, *, crop_size: int, context_padding: int) -> Tensor:
    """Grow boxes so that, warped to ``crop_size``, each has ``context_padding`` px of context per side.

    R-CNN (Girshick et al., 2014, appendix A) warps the box dilated by ``p`` pixels
    *of the warped frame*: the box becomes ``crop_size - 2 p`` of the crop's
    ``crop_size``, so each side grows by ``p / (crop_size - 2 p)`` of its length.
    """
    if not 0 <= 2 * context_padding < crop_size:
        raise ValueError(f"context_padding must be in [0, crop_size / 2), got {context_padding} for {crop_size}")
    grow = context_padding / (crop_size - 2 * context_padding)
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0)
    return torch.cat([boxes[:, :2] - grow * wh, boxes[:, 2:] + grow * wh], dim=1)


class WarpedCrops(RegionExtractor):
    """R-CNN's region "features": the image pixels of each box, warped to a fixed square.

    Every box is dilated for context (:func:`context_boxes`) and resampled
    bilinearly to ``crop_size`` x ``crop_size`` regardless of its aspect ratio (the
    paper's "warp"; adaptive RoIAlign sampling, so a shrinking warp averages the
    pixels it covers). Pixels outside the image read the padding of the normalized
    batch, i.e. the mean colour, as in the paper. The crops are then classified
    by a CNN of their own (see :class:`detkit.stages.rcnn_head.RCNNHead`).

    ``forward(images, features, boxes) -> RegionFeatures`` with ``(R, 3, S, S)``
    normalized pixels; ``features`` is not read.

    Args:
        crop_size: S (the paper: 227).
        context_padding: context pixels per side in the warped crop (the paper: 16).
    """

    def __init__(self, *, crop_size: int = 227, context_padding: int = 16) -> None:
        super().__init__()
        context_boxes(torch.zeros((0, 4)), crop_size=crop_size, context_padding=context_padding)  # validate
        self.crop_size = int(crop_size)
        self.context_padding = int(context_padding)

    def forward(self, images: ImageBatch, features: FeatureMaps | None, boxes: list[Tensor]) -> RegionFeatures:
        num_per_image = [int(b.shape[0]) for b in boxes]
        tensor = images.tensor
        rois = torch.cat(
            [
                torch.cat([torch.full_like(b[:, :1], i), context_boxes(
                    b.to(tensor.dtype), crop_size=self.crop_size, context_padding=self.context_padding
                )], dim=1)
                for i, b in enumerate(boxes)
            ]
            or [tensor.new_zeros((0, 5))],
            dim=0,
        )
        crops = roi_align(
            tensor, rois, (self.crop_size, self.crop_size), spatial_scale=1.0, sampling_ratio=0, aligned=True
        )
        return RegionFeatures(crops, num_per_image)
