"""Data preprocessing of CS231n lecture 6: mean image or per-channel mean (and std).

The statistics are computed on the *training* set only and then applied
unchanged to validation and test data; computing them on all data leaks the
test set into training. AlexNet subtracts the mean image ``(C, H, W)``; VGG and
later nets subtract a per-channel mean ``(C,)`` (and often divide by the
per-channel std), which needs no fixed image size.

Shapes: ``N`` images, ``C`` channels, ``H x W`` pixels; images are ``(N, C, H, W)``.
A training set is given as one tensor or as an iterable of such batches (a
data loader, or ``(images, labels)`` pairs), accumulated in float64 with Chan's
pairwise update so that the statistics do not depend on the batching.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["Preprocessor", "channel_mean_std", "fit_preprocessor", "mean_image"]

Batches = Tensor | Iterable[Tensor] | Iterable[tuple[Tensor, ...]] | Iterable[list[Tensor]]


def _batches(data: Batches) -> Iterable[Tensor]:
    """Images ``(N, C, H, W)`` from a tensor or an iterable of tensors or ``(images, ...)`` tuples."""
    for item in [data] if isinstance(data, Tensor) else data:
        images = item if isinstance(item, Tensor) else item[0]
        if images.dim() != 4:
            raise ValueError(f"expected image batches (N, C, H, W), got shape {tuple(images.shape)}")
        yield images


class _RunningMoments:
    """Streaming mean and sum of squared deviations (Chan et al.), elementwise over a fixed shape."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, values: Tensor, dim: tuple[int, ...]) -> None:
        """Merge ``values`` reduced over ``dim``."""
        values = values.to(torch.float64)
        n = math.prod(values.shape[d] for d in dim)  # values per statistic in this batch
        if n == 0:
            return
        batch_mean = values.mean(dim=dim)
        batch_m2 = ((values - values.mean(dim=dim, keepdim=True)) ** 2).sum(dim=dim)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, batch_mean, batch_m2
            return
        total = self.count + n
        delta = batch_mean - self.mean
        # Merging two groups: the new mean shifts by delta * n / total and M2 gains the between-group term.
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total

    def result(self) -> tuple[Tensor, Tensor]:
        if self.mean is None or self.m2 is None:
            raise ValueError("cannot compute statistics of an empty training set")
        return self.mean, self.m2 / self.count  # population variance (ddof=0)


def mean_image(data: Batches) -> Tensor:
    """The mean training image: ``(N, C, H, W)`` (or batches of it) -> ``(C, H, W)`` float64."""
    moments = _RunningMoments()
    for images in _batches(data):
        moments.update(images, dim=(0,))
    return moments.result()[0]


def channel_mean_std(data: Batches) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (population) std over all training pixels: -> ``(C,)``, ``(C,)`` float64."""
    moments = _RunningMoments()
    for images in _batches(data):
        moments.update(images, dim=(0, 2, 3))
    mean, var = moments.result()
    return mean, var.sqrt()


@dataclass(frozen=True)
class Preprocessor:
    """Subtract ``mean`` (``(C, H, W)`` or ``(C,)``) and divide by ``std`` (``(C,)`` or None).

    Call it on ``(N, C, H, W)`` or ``(C, H, W)`` images; the result has the input's
    floating dtype (float32 for integer input).
    """

    mean: Tensor
    std: Tensor | None = None

    def __call__(self, images: Tensor) -> Tensor:
        """``(N, C, H, W)`` or ``(C, H, W)`` -> same shape, normalised."""
        dtype = images.dtype if images.is_floating_point() else torch.float32
        mean = self.mean.to(device=images.device, dtype=dtype)
        if mean.dim() == 1:
            mean = mean[:, None, None]  # (C,) -> (C, 1, 1): broadcast over pixels
        out = images.to(dtype) - mean
        if self.std is not None:
            std = self.std.to(device=images.device, dtype=dtype)
            out = out / std[:, None, None]
        return out


def fit_preprocessor(
    data: Batches, mode: Literal["image", "channel"] = "channel", *, scale: bool = False
) -> Preprocessor:
    """Fit a :class:`Preprocessor` on training data.

    ``mode="image"`` subtracts the mean image (AlexNet); ``"channel"`` the per-channel
    mean (VGG); ``scale=True`` also divides by the per-channel std (channel mode only).
    """
    if mode == "image":
        if scale:
            raise ValueError("scale=True divides by a per-channel std; use mode='channel'")
        return Preprocessor(mean=mean_image(data))
    if mode == "channel":
        mean, std = channel_mean_std(data)
        return Preprocessor(mean=mean, std=std if scale else None)
    raise ValueError(f"unknown preprocessing mode {mode!r}; use 'image' or 'channel'")
