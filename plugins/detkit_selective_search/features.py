"""Region features for selective search, computed for all regions at once.

Shapes: H, W image size; C channels; n regions (labels ``0..n-1``); E adjacent
region pairs; O = 8 texture orientations.

Every feature is a histogram or a reduction over the pixels of each region, so
each is one :func:`numpy.bincount` over ``label * bins + bin`` codes; nothing
loops over pixels in Python.

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

COLOUR_BINS = 25
TEXTURE_BINS = 10
TEXTURE_ORIENTATIONS = 8


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


def oriented_responses(image: np.ndarray, *, sigma: float = 1.0) -> np.ndarray:
    """Gaussian-derivative responses in 8 orientations: ``(H, W, C) -> (H, W, C, O)`` float32 >= 0."""
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
    g, dg = _gaussian_derivative_kernels(sigma)
    gx = cv2.sepFilter2D(img, cv2.CV_32F, dg, g, borderType=cv2.BORDER_REFLECT)
    gy = cv2.sepFilter2D(img, cv2.CV_32F, g, dg, borderType=cv2.BORDER_REFLECT)
    gx = gx.reshape(img.shape)  # OpenCV drops a single channel axis
    gy = gy.reshape(img.shape)
    theta = np.arange(TEXTURE_ORIENTATIONS // 2) * (np.pi / (TEXTURE_ORIENTATIONS // 2))
    # (H, W, C, 1) * (4,) -> (H, W, C, 4): directions 0, 45, 90, 135 degrees
    half = gx[..., None] * np.cos(theta).astype(np.float32) + gy[..., None] * np.sin(theta).astype(np.float32)
    # opposite directions (180..315 degrees) are the negated responses
    return np.concatenate([np.maximum(half, 0.0), np.maximum(-half, 0.0)], axis=-1)


def texture_codes(image: np.ndarray, *, sigma: float = 1.0) -> TextureCodes:
    """Bin the oriented responses of ``image (H, W, C)`` into 10 bins per map (sparse, bin > 0 only)."""
    responses = oriented_responses(image, sigma=sigma)
    h, w, c, o = responses.shape
    flat = responses.reshape(h * w, c * o)  # (H*W, C*O)
    peak = flat.max(axis=0)
    scale = np.where(peak > 0, TEXTURE_BINS / np.maximum(peak, 1e-12), 0.0).astype(np.float32)
    bins = np.minimum((flat * scale).astype(np.int32), TEXTURE_BINS - 1)  # (H*W, C*O)
    pixel, channel_orientation = np.nonzero(bins)
    code = channel_orientation * TEXTURE_BINS + bins[pixel, channel_orientation]
    return TextureCodes(pixel=pixel.astype(np.int64), code=code.astype(np.int64), num_channels=c)


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


def colour_histograms(image: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """``(n, C * 25)`` float32 colour histograms, each row L1-normalized over all channels."""
    img = image if image.ndim == 3 else image[:, :, None]
    c = img.shape[2]
    flat_labels = labels.ravel().astype(np.int64)
    # (H*W, C) bin of every channel, offset by channel: code = channel * 25 + bin
    bins = (img.reshape(-1, c).astype(np.int64) * COLOUR_BINS) >> 8
    codes = bins + np.arange(c, dtype=np.int64) * COLOUR_BINS
    dim = c * COLOUR_BINS
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
    """``(E, 2)`` int64 unique pairs ``i < j`` of labels that touch horizontally or vertically."""
    labels = labels.astype(np.int64, copy=False)
    n = int(labels.max()) + 1 if labels.size else 0
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    differ = a != b
    a, b = a[differ], b[differ]
    key = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
    return np.stack([key // max(n, 1), key % max(n, 1)], axis=1)
