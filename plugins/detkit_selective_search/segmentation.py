"""Colour spaces and the Felzenszwalb-Huttenlocher graph segmentation.

Selective search starts from an over-segmentation by Felzenszwalb and
Huttenlocher (IJCV 2004): pixels are graph nodes, neighbouring pixels are joined
by edges weighted by the Euclidean distance of their (Gaussian-smoothed) colours,
and edges are visited in increasing weight; two components merge when the edge is
no heavier than ``Int(C) + k / |C|`` for both (``Int`` the heaviest edge of the
component's spanning tree). A large ``k`` gives fewer, larger segments; components
smaller than ``min_size`` pixels are merged into a neighbour afterwards.

The union-find pass runs in the compiled :func:`skimage.segmentation.felzenszwalb`.
Its parameters map onto the paper's directly when the image is ``uint8``: it
divides the pixels by 255 and ``scale`` by 255 alike, so ``scale`` is the paper's
``k`` in 8-bit colour units; ``sigma`` is the standard deviation of the Gaussian
pre-smoothing; ``min_size`` is the post-processing minimum component size. The
edge weight is the Euclidean distance over all channels (not a per-channel
segmentation), as in OpenCV's ``ximgproc`` graph segmentation; it uses the
8-neighbourhood where OpenCV uses the 4-neighbourhood.

Colour spaces are computed from 8-bit RGB with OpenCV's 8-bit conversions, so
every channel is ``uint8`` (hue in ``0..179``, Lab scaled to ``0..255``).
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.segmentation import felzenszwalb

#: Names accepted by :func:`convert_colour`, with their channel count.
COLOUR_SPACES: dict[str, int] = {
    "rgb": 3,  # plain RGB
    "hsv": 3,  # hue, saturation, value
    "lab": 3,  # CIE L*a*b*
    "gray": 1,  # intensity I
    "h": 1,  # the hue channel of HSV alone
    "rgi": 3,  # red, green and intensity
    "nrgb": 3,  # normalized rgb: each channel over R+G+B
}

_ALIASES = {"i": "gray", "grey": "gray", "intensity": "gray", "rgI": "rgi"}


def canonical_colour_space(name: str) -> str:
    """The canonical name of colour space ``name`` (case-insensitive, aliases resolved)."""
    key = _ALIASES.get(name, name.lower())
    key = _ALIASES.get(key, key)
    if key not in COLOUR_SPACES:
        raise ValueError(f"unknown colour space {name!r}; known: {', '.join(COLOUR_SPACES)} (and I for gray)")
    return key


def convert_colour(image: np.ndarray, space: str) -> np.ndarray:
    """``image (H, W, 3)`` uint8 RGB in colour space ``space`` as ``(H, W, C)`` uint8."""
    space = canonical_colour_space(space)
    if space == "rgb":
        out = image
    elif space == "hsv":
        out = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    elif space == "lab":
        out = cv2.cvtColor(image, cv2.COLOR_RGB2Lab)
    elif space == "gray":
        out = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
    elif space == "h":
        out = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[:, :, :1]
    elif space == "rgi":
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        out = np.dstack([image[:, :, 0], image[:, :, 1], gray])
    else:  # nrgb
        rgb = image.astype(np.float32)
        total = rgb.sum(axis=2, keepdims=True)
        out = np.round(255.0 * rgb / np.maximum(total, 1.0)).astype(np.uint8)
    return np.ascontiguousarray(out, dtype=np.uint8)


def segment(image: np.ndarray, *, k: float, sigma: float = 0.8, min_size: int = 100) -> np.ndarray:
    """Felzenszwalb-Huttenlocher segmentation of ``image (H, W, C)`` uint8.

    Args:
        k: the paper's threshold constant, in 8-bit colour units.
        sigma: standard deviation of the Gaussian smoothing before the edge weights.
        min_size: components smaller than this many pixels are merged afterwards.

    Returns:
        ``(H, W)`` int32 labels ``0..n-1``, every label used.
    """
    if image.dtype != np.uint8:
        raise TypeError(f"segment expects a uint8 image (k is in 8-bit units), got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    labels = felzenszwalb(image, scale=float(k), sigma=float(sigma), min_size=int(min_size), channel_axis=-1)
    return labels.astype(np.int32, copy=False)


def segment_at_scale(
    image: np.ndarray, *, k: float, sigma: float = 0.8, min_size: int = 100, scale: float = 1.0
) -> np.ndarray:
    """:func:`segment` run on ``image`` resized by ``scale``, labels brought back to full size.

    The graph segmentation dominates the cost of selective search and grows with
    the number of pixels; at ``scale < 1`` it runs on an area-averaged copy, with
    ``k`` and ``min_size`` scaled by ``scale**2`` so that segments keep their size
    in full-resolution pixels (``k / |C|`` compares against a pixel count).

    Returns:
        ``(H, W)`` int32 labels ``0..n-1``, every label used.
    """
    if scale >= 1.0:
        return segment(image, k=k, sigma=sigma, min_size=min_size)
    h, w = image.shape[:2]
    small_w, small_h = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA)
    area = (small_w * small_h) / float(w * h)
    labels = segment(small, k=k * area, sigma=sigma, min_size=max(1, round(min_size * area)))
    labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    return compact_labels(labels)


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber ``labels`` to ``0..n-1`` keeping their order (a label can vanish in an enlargement)."""
    present = np.bincount(labels.ravel()) > 0
    remap = (np.cumsum(present) - 1).astype(np.int32)
    return remap[labels]
