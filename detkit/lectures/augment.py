"""Data augmentation of CS231n lecture 7 on ``(C, H, W)`` float tensors, drawn from torch's RNG.

Augmentation is a regulariser of the same family as dropout: training sees a
random transformation of each image (randomness at training time), testing
sees the plain image or an average over fixed crops (marginalised at test time).

- horizontal flips: a mirrored cat is still a cat;
- random resized crops (Inception/ResNet training): area fraction uniform in
  ``scale`` and aspect ratio log-uniform in ``ratio``, then resized to a fixed size;
- colour jitter: random brightness, contrast and saturation in random order;
- PCA ("fancy PCA") lighting (AlexNet): add to every pixel a random combination
  of the principal components of the dataset's RGB covariance, mimicking
  changes in illumination intensity and colour.

Images are ``(C, H, W)`` floats in ``[0, 1]`` (colour jitter clamps to that range).
Every random function takes an optional ``torch.Generator``; with ``None`` it
uses torch's global RNG in the same order of draws as torchvision, so that
with equal seeds the sampled parameters are torchvision's.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ColorJitterParams",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "color_jitter",
    "color_jitter_params",
    "horizontal_flip",
    "pca_lighting",
    "random_horizontal_flip",
    "random_resized_crop",
    "random_resized_crop_params",
    "rgb_pca",
    "to_grayscale",
]

#: Rec. 601 luma weights, with torchvision's (and TensorFlow's) rounding of 0.299.
LUMA_WEIGHTS = (0.2989, 0.587, 0.114)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=generator).item())


def horizontal_flip(img: Tensor) -> Tensor:
    """Mirror left-right: ``(..., H, W) -> (..., H, W)``."""
    return img.flip(-1)


def random_horizontal_flip(img: Tensor, p: float = 0.5, *, generator: torch.Generator | None = None) -> Tensor:
    """Flip with probability ``p``: ``(C, H, W) -> (C, H, W)``."""
    return horizontal_flip(img) if torch.rand(1, generator=generator).item() < p else img


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """A random crop box ``(top, left, h, w)`` inside a ``height x width`` image.

    Up to 10 tries: area ``h * w`` = ``U(scale) * height * width`` and ``w / h`` =
    ``exp(U(log ratio))`` (log-uniform, so that 3/4 and 4/3 are equally likely);
    the first box that fits is placed uniformly at random. If none fits, the
    central crop of the whole image with the aspect ratio clamped to ``ratio``.
    """
    if scale[0] > scale[1] or ratio[0] > ratio[1]:
        raise ValueError(f"scale {scale} and ratio {ratio} must be (low, high) ranges")
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * _uniform(scale[0], scale[1], generator)
        # float32 draws and exp, exactly as torchvision: equal seeds give equal boxes.
        log_aspect = torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]), generator=generator)
        aspect = float(torch.exp(log_aspect))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:  # too tall for every allowed ratio: full width, clamp height
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:  # too wide: full height, clamp width
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    img: Tensor,
    size: tuple[int, int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Crop a random box (:func:`random_resized_crop_params`) and resize it: ``(C, H, W) -> (C, *size)``.

    Bilinear resizing with antialiasing (as torchvision's default), so shrinking
    a large crop does not alias.
    """
    top, left, h, w = random_resized_crop_params(img.shape[-2], img.shape[-1], scale, ratio, generator=generator)
    crop = img[..., top : top + h, left : left + w]
    # (C, h, w) -> (1, C, h, w) -> (1, C, *size) -> (C, *size)
    return F.interpolate(crop[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def to_grayscale(img: Tensor) -> Tensor:
    """Luma of an RGB image: ``(3, H, W) -> (1, H, W)``."""
    r, g, b = img.unbind(dim=-3)
    return (LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b).unsqueeze(-3)


def _blend(img: Tensor, other: Tensor, factor: float) -> Tensor:
    """``factor * img + (1 - factor) * other``, clamped to ``[0, 1]``: factor > 1 extrapolates away from ``other``."""
    return (factor * img + (1.0 - factor) * other).clamp(0.0, 1.0)


def adjust_brightness(img: Tensor, factor: float) -> Tensor:
    """Scale intensities by ``factor`` (blend with black): ``(C, H, W) -> (C, H, W)``."""
    return _blend(img, torch.zeros_like(img), factor)


def adjust_contrast(img: Tensor, factor: float) -> Tensor:
    """Blend with the image's mean grey level: ``factor < 1`` flattens, ``> 1`` stretches."""
    mean = to_grayscale(img).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(img, mean, factor)


def adjust_saturation(img: Tensor, factor: float) -> Tensor:
    """Blend with the grey version: 0 gives greyscale, 1 the image, > 1 more vivid colours."""
    return _blend(img, to_grayscale(img), factor)


class ColorJitterParams(NamedTuple):
    """Sampled jitter: the ``order`` of the three adjustments (0 brightness, 1 contrast,
    2 saturation) and their factors (None: that adjustment is off)."""

    order: list[int]
    brightness: float | None
    contrast: float | None
    saturation: float | None


def color_jitter_params(
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    *,
    generator: torch.Generator | None = None,
) -> ColorJitterParams:
    """Factors uniform in ``[max(0, 1 - s), 1 + s]`` for each strength ``s`` (0 disables), random order."""
    order = [int(i) for i in torch.randperm(3, generator=generator)]

    def factor(strength: float) -> float | None:
        if strength < 0:
            raise ValueError(f"jitter strengths must be non-negative, got {strength}")
        return _uniform(max(0.0, 1.0 - strength), 1.0 + strength, generator) if strength > 0 else None

    return ColorJitterParams(order, factor(brightness), factor(contrast), factor(saturation))


def color_jitter(
    img: Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random brightness, contrast and saturation in random order: ``(3, H, W) -> (3, H, W)``."""
    params = color_jitter_params(brightness, contrast, saturation, generator=generator)
    adjust = (
        (adjust_brightness, params.brightness),
        (adjust_contrast, params.contrast),
        (adjust_saturation, params.saturation),
    )
    for i in params.order:
        fn, f = adjust[i]
        if f is not None:
            img = fn(img, f)
    return img


def rgb_pca(images: Tensor) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of the RGB covariance over all pixels of ``(N, 3, H, W)`` images.

    Returns ``eigvals`` ``(3,)`` in descending order and ``eigvecs`` ``(3, 3)`` whose
    *columns* are the matching unit eigenvectors. Computed in float64.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W), got {tuple(images.shape)}")
    pixels = images.to(torch.float64).permute(1, 0, 2, 3).reshape(3, -1)  # (N, 3, H, W) -> (3, N*H*W)
    centered = pixels - pixels.mean(dim=1, keepdim=True)
    cov = centered @ centered.T / pixels.shape[1]  # (3, 3)
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
    return eigvals.flip(0).clamp(min=0), eigvecs.flip(1)


def pca_lighting(
    img: Tensor,
    eigvals: Tensor,
    eigvecs: Tensor,
    alpha_std: float = 0.1,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """AlexNet's lighting noise: ``img + sum_i alpha_i * eigval_i * eigvec_i``, ``alpha_i ~ N(0, alpha_std^2)``.

    ``img``: ``(3, H, W)``; ``eigvals`` ``(3,)`` and ``eigvecs`` ``(3, 3)`` (columns)
    from :func:`rgb_pca` on the training set. The same RGB offset is added to
    every pixel, so the offset lies in the span of the principal components and its
    coordinate along component ``i`` has std ``alpha_std * eigval_i``: the colour
    shifts mostly along the directions in which natural images already vary.
    (This is the paper's formula with the covariance eigenvalues; some
    implementations plug in their square roots instead.)
    """
    alpha = torch.randn(3, generator=generator, dtype=torch.float64) * alpha_std
    offset = eigvecs.to(torch.float64) @ (alpha * eigvals.to(torch.float64))  # (3, 3) @ (3,) -> (3,)
    return img + offset.to(img.dtype)[:, None, None]  # (3,) -> (3, 1, 1): same shift at every pixel
