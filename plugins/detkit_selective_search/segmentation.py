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

Selective search segments each colour space at several ``k``: the resizing and
the Gaussian smoothing do not depend on ``k``, so :func:`prepare_segmentation`
does them once (:class:`SegmentationInput`) and
:meth:`SegmentationInput.segment` runs the union-find pass per ``k``, on the
smoothed image with ``sigma = 0`` (the same labels as smoothing inside
:func:`~skimage.segmentation.felzenszwalb`). A :class:`Segmentation` keeps the
labels on the grid the segmentation ran on with the nearest-neighbour maps to the
full image, so region sizes, boxes and adjacency can be read off the smaller grid.

Colour spaces are computed from 8-bit RGB with OpenCV's 8-bit conversions, so
every channel is ``uint8`` (hue in ``0..179``, Lab scaled to ``0..255``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import felzenszwalb
from skimage.util import img_as_float

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


@dataclass(frozen=True)
class Segmentation:
    """Labels of one graph segmentation on its grid, with the map to the full image.

    The full-resolution labels are the nearest-neighbour enlargement
    ``labels[rows][:, cols]``. Every grid row and column appears in ``rows`` and
    ``cols`` (the grid is never larger than the image), so the enlargement keeps
    every label and the 4-neighbour adjacency of the labels.

    Attributes:
        labels: ``(h, w)`` int32 labels ``0..n-1`` on the grid, every label used.
        rows: ``(H,)`` int64 grid row of each image row, non-decreasing.
        cols: ``(W,)`` int64 grid column of each image column, non-decreasing.
    """

    labels: np.ndarray
    rows: np.ndarray
    cols: np.ndarray

    @property
    def num_regions(self) -> int:
        """n, the number of labels."""
        return int(self.labels.max()) + 1 if self.labels.size else 0

    def full_labels(self) -> np.ndarray:
        """``(H, W)`` int32 labels of the full image."""
        h, w = self.labels.shape
        if (h, w) == (len(self.rows), len(self.cols)):
            return self.labels
        return cv2.resize(self.labels, (len(self.cols), len(self.rows)), interpolation=cv2.INTER_NEAREST)


@dataclass(frozen=True)
class SegmentationInput:
    """An image made ready for :func:`felzenszwalb`: resized and smoothed once, segmented at any ``k``.

    Attributes:
        smoothed: ``(h, w, C)`` float64 in ``[0, 1]``, the resized image smoothed
            by the Gaussian of the segmentation.
        area: grid pixels over image pixels (``k`` and ``min_size`` are scaled by it).
        rows: ``(H,)`` grid row of each image row.
        cols: ``(W,)`` grid column of each image column.
    """

    smoothed: np.ndarray
    area: float
    rows: np.ndarray
    cols: np.ndarray

    def segment(self, *, k: float, min_size: int = 100) -> Segmentation:
        """The graph segmentation at threshold ``k`` (8-bit colour units, full-resolution sizes).

        Args:
            k: the paper's threshold constant, scaled by :attr:`area` on a smaller grid.
            min_size: smallest segment in image pixels, scaled likewise.
        """
        min_size = int(min_size) if self.area == 1.0 else max(1, round(min_size * self.area))
        labels = felzenszwalb(self.smoothed, scale=float(k) * self.area, sigma=0.0, min_size=min_size, channel_axis=-1)
        return Segmentation(labels=labels.astype(np.int32, copy=False), rows=self.rows, cols=self.cols)


def prepare_segmentation(image: np.ndarray, *, sigma: float = 0.8, scale: float = 1.0) -> SegmentationInput:
    """Resize ``image (H, W, C)`` uint8 by ``scale`` and smooth it for :meth:`SegmentationInput.segment`.

    At ``scale < 1`` the segmentation runs on an area-averaged copy, with ``k`` and
    ``min_size`` scaled by the ratio of pixel counts so that segments keep their size
    in full-resolution pixels (``k / |C|`` compares against a pixel count). The
    smoothing is :func:`felzenszwalb`'s own (:func:`skimage.util.img_as_float`,
    then :func:`scipy.ndimage.gaussian_filter` over the two image axes), so the
    labels equal those of calling it on the resized ``uint8`` image with ``sigma``.

    Raises:
        TypeError: ``image`` is not ``uint8`` (``k`` is in 8-bit units).
    """
    if image.dtype != np.uint8:
        raise TypeError(f"segment expects a uint8 image (k is in 8-bit units), got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    h, w = image.shape[:2]
    small = image
    if scale < 1.0:
        small_w, small_h = max(1, round(w * scale)), max(1, round(h * scale))
        small = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA).reshape(small_h, small_w, -1)
    floats = img_as_float(small)
    if sigma > 0:
        floats = ndimage.gaussian_filter(floats, sigma=[float(sigma), float(sigma), 0.0])
    small_h, small_w = small.shape[:2]
    return SegmentationInput(
        smoothed=floats,
        area=(small_w * small_h) / float(w * h),
        rows=nearest_map(small_h, h),
        cols=nearest_map(small_w, w),
    )


def nearest_map(size: int, new_size: int) -> np.ndarray:
    """``(new_size,)`` int64 source index of each index of a nearest-neighbour resize from ``size``.

    The map of :func:`cv2.resize` with ``INTER_NEAREST`` along one axis, read off by
    resizing the row ``0..size-1``.
    """
    if size == new_size:
        return np.arange(size, dtype=np.int64)
    index = np.arange(size, dtype=np.int32)[None, :]
    return cv2.resize(index, (new_size, 1), interpolation=cv2.INTER_NEAREST)[0].astype(np.int64)


def segment(image: np.ndarray, *, k: float, sigma: float = 0.8, min_size: int = 100) -> np.ndarray:
    """Felzenszwalb-Huttenlocher segmentation of ``image (H, W, C)`` uint8.

    Args:
        k: the paper's threshold constant, in 8-bit colour units.
        sigma: standard deviation of the Gaussian smoothing before the edge weights.
        min_size: components smaller than this many pixels are merged afterwards.

    Returns:
        ``(H, W)`` int32 labels ``0..n-1``, every label used.
    """
    return prepare_segmentation(image, sigma=sigma).segment(k=k, min_size=min_size).labels


def segment_at_scale(
    image: np.ndarray, *, k: float, sigma: float = 0.8, min_size: int = 100, scale: float = 1.0
) -> np.ndarray:
    """:func:`segment` run on ``image`` resized by ``scale``, labels brought back to full size.

    The graph segmentation dominates the cost of selective search and grows with
    the number of pixels; see :func:`prepare_segmentation` for the scaling of ``k``
    and ``min_size``.

    Returns:
        ``(H, W)`` int32 labels ``0..n-1``, every label used.
    """
    prepared = prepare_segmentation(image, sigma=sigma, scale=min(scale, 1.0))
    return prepared.segment(k=k, min_size=min_size).full_labels()
