"""Region feature extraction: RoIAlign over one or several pyramid levels.

Shape glossary: N images, R_i boxes of image i, R = sum R_i, C channels,
h x w the pooled size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detkit.ops import box_area, roi_align
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
        pooled = rois.new_zeros((rois.shape[0], maps[0].shape[1], *self.output_size), dtype=maps[0].dtype)
        for level, (feature, stride) in enumerate(zip(maps, strides)):
            idx = torch.where(levels == level)[0]
            pooled[idx] = self._pool(feature, rois[idx], stride).to(pooled.dtype)
        return RegionFeatures(pooled, num_per_image)

    def _pool(self, feature: Tensor, rois: Tensor, stride: int) -> Tensor:
        return roi_align(
            feature, rois.to(feature.dtype), self.output_size, spatial_scale=1.0 / stride,
            sampling_ratio=self.sampling_ratio, aligned=self.aligned,
        )
