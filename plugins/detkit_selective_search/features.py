"""Region features for selective search, computed for all regions at once.

Shapes: H, W image size; C channels; n regions (labels ``0..n-1``); E adjacent
region pairs; O = 8 texture orientations.

Every feature is a histogram or a reduction over the pixels of each region, so
each is one :func:`numpy.bincount` over ``label * bins + bin`` codes; nothing
loops over pixels in Python. The per-pixel codes depend on the image only, so
selective search computes them once per colour space (:func:`colour_codes`,
:func:`texture_codes`) and bins them for each segmentation. Sizes, boxes and
adjacency are read off the grid a segmentation ran on
(:func:`segmentation_sizes`, :func:`segmentation_boxes`, :func:`adjacency`),
four times fewer pixels at the default half scale.

- colour: 25 bins per channel over ``[0, 256)``, concatenated, L1-normalized
  (``C * 25`` values per region);
- texture (SIFT-like, as in Uijlings et al.): Gaussian derivatives with
  ``sigma = 1`` in 8 orientations per channel, 10 bins each, L1-normalized
  (``C * 8 * 10`` values per region). The derivative in direction ``theta`` is
  ``cos(theta) * gx + sin(theta) * gy`` (derivatives of a Gaussian are steerable);
  its positive part is the response, so opposite directions split the sign.
  Each response map is binned over ``[0, max]`` of that map;
- size (pixels), bounding box (``x0, y0, x1, y1``, exclusive ``x1, y1``) and the
  adjacency of regions (4-neighbourhood).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from detkit_selective_search.segmentation import Segmentation

COLOUR_BINS = 25
TEXTURE_BINS = 10
TEXTURE_ORIENTATIONS = 8
_DENSE_PAIR_KEYS = 1 << 22  # adjacency() counts pair keys in an array up to this size, else sorts them


@dataclass
class TextureCodes:
    """Per-pixel texture bins of one image, stored sparsely.

    Most responses fall in bin 0 (flat areas and the negative half of every
    direction), so only the pixels with a bin above 0 are kept and the bin-0
    counts are recovered from the region sizes.

    Attributes:
        pixel: ``(P,)`` flat pixel index of each non-zero entry.
        code: ``(P,)`` ``(channel * O + orientation) * 10 + bin`` of each entry.
        num_channels: C.
    """

    pixel: np.ndarray
    code: np.ndarray
    num_channels: int

    @property
    def dim(self) -> int:
        return self.num_channels * TEXTURE_ORIENTATIONS * TEXTURE_BINS


def _gaussian_derivative_kernels(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    # OpenCV filters by correlation, sum_i k(i) f(x + i): correlating with x * g(x) / sigma^2
    # (the mirrored derivative kernel) gives the derivative of the smoothed image, sign included
    dg = x / sigma**2 * g
    return g.astype(np.float32), dg.astype(np.float32)


def _gradients(image: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian derivatives ``d/dx, d/dy`` of ``image (H, W, C)``: two ``(H, W, C)`` float32."""
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
    g, dg = _gaussian_derivative_kernels(sigma)
    gx = cv2.sepFilter2D(img, cv2.CV_32F, dg, g, borderType=cv2.BORDER_REFLECT)
    gy = cv2.sepFilter2D(img, cv2.CV_32F, g, dg, borderType=cv2.BORDER_REFLECT)
    return gx.reshape(img.shape), gy.reshape(img.shape)  # OpenCV drops a single channel axis


def _steering_weights() -> tuple[np.ndarray, np.ndarray]:
    """``cos, sin`` (float32) of the directions 0, 45, 90, 135 degrees."""
    theta = np.arange(TEXTURE_ORIENTATIONS // 2) * (np.pi / (TEXTURE_ORIENTATIONS // 2))
    return np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)


def oriented_responses(image: np.ndarray, *, sigma: float = 1.0) -> np.ndarray:
    """Gaussian-derivative responses in 8 orientations: ``(H, W, C) -> (H, W, C, O)`` float32 >= 0."""
    gx, gy = _gradients(image, sigma)
    cos, sin = _steering_weights()
    # (H, W, C, 1) * (4,) -> (H, W, C, 4): directions 0, 45, 90, 135 degrees
    half = gx[..., None] * cos + gy[..., None] * sin
    # opposite directions (180..315 degrees) are the negated responses
    return np.concatenate([np.maximum(half, 0.0), np.maximum(-half, 0.0)], axis=-1)


def texture_bin_scales(peaks: np.ndarray) -> np.ndarray:
    """float32 factors taking responses in ``[0, peak]`` to ``[0, 10]`` (0 for a map that is all 0)."""
    peaks = np.asarray(peaks, dtype=np.float32)
    return np.where(peaks > 0, TEXTURE_BINS / np.maximum(peaks, 1e-12), 0.0).astype(np.float32)


def texture_codes(image: np.ndarray, *, sigma: float = 1.0) -> TextureCodes:
    """Bin the oriented responses of ``image (H, W, C)`` into 10 bins per map (sparse, bin > 0 only).

    The bins of :func:`oriented_responses`, ``min(int(response * 10 / peak), 9)``
    per map, without building its ``(H, W, C, 8)`` array: each channel and
    direction ``theta`` in 0..135 degrees gives one steered derivative ``r``
    whose positive part is the map at ``theta`` and negative part the map at
    ``theta + 180``; a pixel has a bin above 0 where ``r * scale >= 1`` (or
    ``<= -1`` for the opposite map). The products are the same float32 ones.
    """
    gx, gy = _gradients(image, sigma)
    h, w, c = gx.shape
    cos, sin = _steering_weights()
    half = TEXTURE_ORIENTATIONS // 2
    gx_planes, gy_planes = cv2.split(gx), cv2.split(gy)
    steered = np.empty((c, half, h * w), dtype=np.float32)  # (C, 4, H*W)
    for ch in range(c):
        for d in range(half):
            np.multiply(gx_planes[ch].reshape(-1), cos[d], out=steered[ch, d])
            steered[ch, d] += gy_planes[ch].reshape(-1) * sin[d]
    # (C, 8) peaks in the layout of oriented_responses: orientation d then d + 4
    peaks = np.concatenate([np.maximum(steered.max(axis=2), 0), np.maximum(-steered.min(axis=2), 0)], axis=1)
    scales = texture_bin_scales(peaks)
    pixels, codes = [], []
    product = np.empty(h * w, dtype=np.float32)
    for ch in range(c):
        for d in range(half):
            for orientation, sign in ((d, 1.0), (d + half, -1.0)):
                np.multiply(steered[ch, d], scales[ch, orientation], out=product)
                index = np.flatnonzero(product >= 1.0) if sign > 0 else np.flatnonzero(product <= -1.0)
                values = product[index] if sign > 0 else -product[index]
                bins = np.minimum(values.astype(np.int64), TEXTURE_BINS - 1)
                pixels.append(index)
                codes.append(bins + (ch * TEXTURE_ORIENTATIONS + orientation) * TEXTURE_BINS)
    return TextureCodes(pixel=np.concatenate(pixels), code=np.concatenate(codes), num_channels=c)


def region_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """``(n,)`` int64 pixel count of each label."""
    return np.bincount(labels.ravel(), minlength=n).astype(np.int64)


def region_boxes(labels: np.ndarray, n: int) -> np.ndarray:
    """``(n, 4)`` float64 ``x0, y0, x1, y1`` (exclusive ``x1, y1``) of each label's pixels."""
    h, w = labels.shape
    # which columns (rows) each label occupies: (n, W) and (n, H) occupancy tables
    in_col = np.zeros((n, w), dtype=bool)
    in_col[labels, np.arange(w)[None, :]] = True
    in_row = np.zeros((n, h), dtype=bool)
    in_row[labels, np.arange(h)[:, None]] = True
    boxes = np.empty((n, 4), dtype=np.float64)
    boxes[:, 0] = in_col.argmax(axis=1)
    boxes[:, 1] = in_row.argmax(axis=1)
    boxes[:, 2] = w - in_col[:, ::-1].argmax(axis=1)
    boxes[:, 3] = h - in_row[:, ::-1].argmax(axis=1)
    return boxes


def segmentation_sizes(segmentation: Segmentation) -> np.ndarray:
    """``(n,)`` int64 pixel count of each label of :meth:`Segmentation.full_labels`, counted on the grid.

    A grid cell stands for ``(image rows mapped to its row) * (image columns mapped to its column)`` pixels.
    """
    labels = segmentation.labels
    h, w = labels.shape
    rows = np.bincount(segmentation.rows, minlength=h).astype(np.float64)
    cols = np.bincount(segmentation.cols, minlength=w).astype(np.float64)
    counts = np.bincount(labels.ravel(), weights=np.outer(rows, cols).ravel(), minlength=segmentation.num_regions)
    return np.rint(counts).astype(np.int64)


def segmentation_boxes(segmentation: Segmentation) -> np.ndarray:
    """``(n, 4)`` float64 boxes (:func:`region_boxes`) of :meth:`Segmentation.full_labels`, found on the grid."""
    labels = segmentation.labels
    h, w = labels.shape
    grid = region_boxes(labels, segmentation.num_regions)
    # first image column (row) mapped to each grid column (row), and one past the last
    col_start = np.searchsorted(segmentation.cols, np.arange(w), side="left")
    col_end = np.searchsorted(segmentation.cols, np.arange(w), side="right")
    row_start = np.searchsorted(segmentation.rows, np.arange(h), side="left")
    row_end = np.searchsorted(segmentation.rows, np.arange(h), side="right")
    x0, y0, x1, y1 = (grid[:, i].astype(np.int64) for i in range(4))
    return np.stack([col_start[x0], row_start[y0], col_end[x1 - 1], row_end[y1 - 1]], axis=1).astype(np.float64)


def colour_codes(image: np.ndarray) -> np.ndarray:
    """``(H*W, C)`` int64 colour bin of every pixel and channel, offset by channel: ``channel * 25 + bin``."""
    img = image if image.ndim == 3 else image[:, :, None]
    c = img.shape[2]
    bins = (img.reshape(-1, c).astype(np.int64) * COLOUR_BINS) >> 8
    return bins + np.arange(c, dtype=np.int64) * COLOUR_BINS


def colour_histograms(image: np.ndarray, labels: np.ndarray, n: int, *, codes: np.ndarray | None = None) -> np.ndarray:
    """``(n, C * 25)`` float32 colour histograms, each row L1-normalized over all channels.

    Args:
        image: ``(H, W, C)`` uint8.
        labels: ``(H, W)`` labels ``0..n-1``.
        n: the number of labels.
        codes: :func:`colour_codes` of ``image`` when already computed.
    """
    if codes is None:
        codes = colour_codes(image)
    dim = codes.shape[1] * COLOUR_BINS
    flat_labels = labels.ravel().astype(np.int64)
    index = (flat_labels[:, None] * dim + codes).ravel()  # (H*W*C,)
    counts = np.bincount(index, minlength=n * dim).reshape(n, dim).astype(np.float32)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def texture_histograms(codes: TextureCodes, labels: np.ndarray, n: int) -> np.ndarray:
    """``(n, C * 8 * 10)`` float32 texture histograms, each row L1-normalized."""
    dim = codes.dim
    maps = codes.num_channels * TEXTURE_ORIENTATIONS
    flat_labels = labels.ravel().astype(np.int64)
    index = flat_labels[codes.pixel] * dim + codes.code
    counts = np.bincount(index, minlength=n * dim).reshape(n, maps, TEXTURE_BINS).astype(np.float32)
    sizes = np.bincount(flat_labels, minlength=n).astype(np.float32)
    # every pixel counts once per map: bin 0 holds what the sparse codes left out
    counts[:, :, 0] = sizes[:, None] - counts[:, :, 1:].sum(axis=2)
    flat_counts = counts.reshape(n, dim)
    return flat_counts / np.maximum(flat_counts.sum(axis=1, keepdims=True), 1.0)


def adjacency(labels: np.ndarray) -> np.ndarray:
    """``(E, 2)`` int64 unique pairs ``i < j`` of labels that touch horizontally or vertically, sorted.

    A nearest-neighbour enlargement that keeps every row and column (that of a
    :class:`~detkit_selective_search.segmentation.Segmentation`) keeps these pairs,
    so they can be read off the segmentation grid.
    """
    n = int(labels.max()) + 1 if labels.size else 0
    right = labels[:, :-1] != labels[:, 1:]
    down = labels[:-1, :] != labels[1:, :]
    a = np.concatenate([labels[:, :-1][right], labels[:-1, :][down]]).astype(np.int64)
    b = np.concatenate([labels[:, 1:][right], labels[1:, :][down]]).astype(np.int64)
    key = np.minimum(a, b) * n + np.maximum(a, b)
    if n * n <= _DENSE_PAIR_KEYS:
        key = np.flatnonzero(np.bincount(key, minlength=n * n))
    else:
        key = np.unique(key)
    return np.stack([key // max(n, 1), key % max(n, 1)], axis=1)
