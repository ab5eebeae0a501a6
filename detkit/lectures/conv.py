"""Convolution and pooling layers, forward and backward (CS231n lecture 5), in numpy.

Shape glossary: N images, C input channels, H x W input size, F filters,
HH x WW filter (or pooling window) size, Ho x Wo output size, S stride, P padding.

Two implementations of each layer:

* ``*_naive``: explicit loops over every output position. Slow, and meant to be:
  it is the obviously-correct reference the fast version is tested against.
* ``*_im2col``: unrolls every receptive field into a row of a matrix
  (:func:`im2col`), so a convolution is one matrix product and pooling is a
  reduction along one axis; the backward pass scatters gradients back with
  :func:`col2im`.

numpy, not torch: the backward passes are the lesson and are written by hand;
``torch.nn.functional`` and torch.autograd are the oracles in the tests.

Where the course material is loose, this module follows torch:

* what the lecture calls "convolution" is cross-correlation (the filter is not
  flipped), as in every deep-learning library; so it is here;
* the notes' output size ``(W - F + 2P) / S + 1`` "must be an integer"; here it
  is floored, ``Ho = (H + 2P - HH) // S + 1``, as torch does: the last rows or
  columns that do not fill a whole window are dropped;
* max pooling pads with ``-inf``, not zeros (a zero pad would win the max over
  negative inputs); average pooling pads with zeros and divides by the full
  window size (torch's ``count_include_pad=True``);
* on a tie inside a max-pooling window the gradient goes to the first maximum
  in row-major order, as torch's CPU kernel does; and where pooling windows
  overlap, gradients *accumulate* into shared inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "ConvCache",
    "PoolCache",
    "avg_pool_backward_im2col",
    "avg_pool_backward_naive",
    "avg_pool_forward_im2col",
    "avg_pool_forward_naive",
    "col2im",
    "conv_backward_im2col",
    "conv_backward_naive",
    "conv_forward_im2col",
    "conv_forward_naive",
    "im2col",
    "max_pool_backward_im2col",
    "max_pool_backward_naive",
    "max_pool_forward_im2col",
    "max_pool_forward_naive",
    "output_size",
]


class ConvCache(NamedTuple):
    """What a convolution's backward pass needs from its forward pass."""

    x: np.ndarray  # (N, C, H, W)
    w: np.ndarray  # (F, C, HH, WW)
    b: np.ndarray  # (F,)
    stride: int
    pad: int
    cols: np.ndarray | None  # (N*Ho*Wo, C*HH*WW) for the im2col version, else None


class PoolCache(NamedTuple):
    """What a pooling layer's backward pass needs from its forward pass."""

    x: np.ndarray  # (N, C, H, W)
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: int
    argmax: np.ndarray | None  # (N*Ho*Wo, C) window index of each max (im2col max pooling), else None


def output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length of a sliding window: ``(size + 2 pad - kernel) // stride + 1`` (floored, like torch)."""
    if stride < 1 or pad < 0:
        raise ValueError(f"need stride >= 1 and pad >= 0; got stride={stride}, pad={pad}")
    out = (size + 2 * pad - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"a window of {kernel} does not fit an input of {size} padded by {pad}")
    return out


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pad(x: np.ndarray, pad: int, value: float = 0.0) -> np.ndarray:
    """Pad the two spatial axes: ``(N, C, H, W) -> (N, C, H+2P, W+2P)``."""
    return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=value)


# ---- im2col / col2im --------------------------------------------------------------------------------


def im2col(
    x: np.ndarray, kh: int, kw: int, *, stride: int | tuple[int, int] = 1, pad: int = 0, pad_value: float = 0.0
) -> np.ndarray:
    """Unroll receptive fields: ``(N, C, H, W) -> (N*Ho*Wo, C*kh*kw)``.

    Row ``(n, i, j)`` (row-major) holds the window under output position
    ``(i, j)`` of image ``n``, flattened in ``(C, kh, kw)`` order, which is the
    order of ``w.reshape(F, -1)``.
    """
    sh, sw = _pair(stride)
    n, c, h, w = x.shape
    ho, wo = output_size(h, kh, sh, pad), output_size(w, kw, sw, pad)
    xp = _pad(x, pad, pad_value)
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    # Loop over the kh*kw offsets inside the window (small), not over the Ho*Wo windows
    # (large): offset (i, j) of every window at once is one strided slice of the image.
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw]  # (N, C, Ho, Wo)
    # (N, C, kh, kw, Ho, Wo) -> (N, Ho, Wo, C, kh, kw) -> (N*Ho*Wo, C*kh*kw)
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * ho * wo, c * kh * kw)


def col2im(
    cols: np.ndarray,
    x_shape: tuple[int, ...],
    kh: int,
    kw: int,
    *,
    stride: int | tuple[int, int] = 1,
    pad: int = 0,
) -> np.ndarray:
    """Adjoint of :func:`im2col`: ``(N*Ho*Wo, C*kh*kw) -> (N, C, H, W)``.

    An input pixel that lies in several windows receives the *sum* of their
    entries (it was copied into each of them); padding entries are dropped.
    """
    sh, sw = _pair(stride)
    n, c, h, w = x_shape
    ho, wo = output_size(h, kh, sh, pad), output_size(w, kw, sw, pad)
    # (N*Ho*Wo, C*kh*kw) -> (N, Ho, Wo, C, kh, kw) -> (N, C, kh, kw, Ho, Wo)
    cols6 = cols.reshape(n, ho, wo, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            # Within one offset (i, j) the strided slice hits distinct pixels, so plain `+=`
            # is safe; overlap between windows is summed across the (i, j) iterations.
            xp[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw] += cols6[:, :, i, j]
    return xp[:, :, pad : pad + h, pad : pad + w]


# ---- convolution ------------------------------------------------------------------------------------


def conv_forward_naive(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, *, stride: int = 1, pad: int = 0
) -> tuple[np.ndarray, ConvCache]:
    """Reference convolution (cross-correlation) with loops.

    Args:
        x: ``(N, C, H, W)`` input.
        w: ``(F, C, HH, WW)`` filters.
        b: ``(F,)`` biases.
        stride: step between windows.
        pad: zeros added on each side of both spatial axes.

    Returns:
        ``out (N, F, Ho, Wo)`` and the cache for :func:`conv_backward_naive`.
    """
    n, _, h, wd = x.shape
    f, _, hh, ww = w.shape
    ho, wo = output_size(h, hh, stride, pad), output_size(wd, ww, stride, pad)
    xp = _pad(x, pad)
    out = np.empty((n, f, ho, wo), dtype=np.result_type(x, w))
    for ni in range(n):
        for fi in range(f):
            for i in range(ho):
                for j in range(wo):
                    window = xp[ni, :, i * stride : i * stride + hh, j * stride : j * stride + ww]  # (C, HH, WW)
                    out[ni, fi, i, j] = (window * w[fi]).sum() + b[fi]
    return out, ConvCache(x, w, b, stride, pad, None)


def conv_backward_naive(dout: np.ndarray, cache: ConvCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference convolution backward: ``dout (N, F, Ho, Wo) -> dx (N, C, H, W), dw (F, C, HH, WW), db (F,)``."""
    x, w, _, stride, pad, _ = cache
    _, _, h, wd = x.shape
    _, _, hh, ww = w.shape
    n, f, ho, wo = dout.shape
    xp = _pad(x, pad)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for ni in range(n):
        for fi in range(f):
            for i in range(ho):
                for j in range(wo):
                    rows = slice(i * stride, i * stride + hh)
                    cols = slice(j * stride, j * stride + ww)
                    g = dout[ni, fi, i, j]
                    # out = sum(window * w) + b: each factor's gradient is the other one times g.
                    dw[fi] += xp[ni, :, rows, cols] * g
                    dxp[ni, :, rows, cols] += w[fi] * g
    db = dout.sum(axis=(0, 2, 3))  # the bias is added at every output position
    return dxp[:, :, pad : pad + h, pad : pad + wd], dw, db


def conv_forward_im2col(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, *, stride: int = 1, pad: int = 0
) -> tuple[np.ndarray, ConvCache]:
    """Vectorized convolution: :func:`conv_forward_naive`'s result as one matrix product.

    Args and returns as :func:`conv_forward_naive`; the cache keeps the unrolled
    input for :func:`conv_backward_im2col`.
    """
    n, _, h, wd = x.shape
    f, _, hh, ww = w.shape
    ho, wo = output_size(h, hh, stride, pad), output_size(wd, ww, stride, pad)
    cols = im2col(x, hh, ww, stride=stride, pad=pad)  # (N*Ho*Wo, C*HH*WW)
    out = cols @ w.reshape(f, -1).T + b  # (N*Ho*Wo, C*HH*WW) @ (C*HH*WW, F) -> (N*Ho*Wo, F)
    out = out.reshape(n, ho, wo, f).transpose(0, 3, 1, 2)  # -> (N, F, Ho, Wo)
    return np.ascontiguousarray(out), ConvCache(x, w, b, stride, pad, cols)


def conv_backward_im2col(dout: np.ndarray, cache: ConvCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorized convolution backward: ``dout (N, F, Ho, Wo) -> dx, dw, db`` (shapes as the naive one)."""
    x, w, _, stride, pad, cols = cache
    if cols is None:
        raise ValueError("conv_backward_im2col needs the cache of conv_forward_im2col")
    f, _, hh, ww = w.shape
    dout_mat = dout.transpose(0, 2, 3, 1).reshape(-1, f)  # (N, F, Ho, Wo) -> (N*Ho*Wo, F)
    # out_mat = cols @ w_mat.T + b, so the matrix-product gradients apply directly.
    dw = (dout_mat.T @ cols).reshape(w.shape)  # (F, N*Ho*Wo) @ (N*Ho*Wo, C*HH*WW)
    db = dout_mat.sum(axis=0)
    dcols = dout_mat @ w.reshape(f, -1)  # (N*Ho*Wo, F) @ (F, C*HH*WW)
    dx = col2im(dcols, x.shape, hh, ww, stride=stride, pad=pad)
    return dx, dw, db


# ---- pooling ----------------------------------------------------------------------------------------


def _pool_geometry(
    x: np.ndarray, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None, pad: int
) -> tuple[tuple[int, int], tuple[int, int], int, int]:
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    # As in torch: with more padding than half a window, a window could lie entirely in
    # the padding, and its max would be -inf.
    if 2 * pad > min(kh, kw):
        raise ValueError(f"pooling pad must be at most half the window; got pad={pad}, window={kh}x{kw}")
    ho, wo = output_size(x.shape[2], kh, sh, pad), output_size(x.shape[3], kw, sw, pad)
    return (kh, kw), (sh, sw), ho, wo


def max_pool_forward_naive(
    x: np.ndarray, *, kernel_size: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None, pad: int = 0
) -> tuple[np.ndarray, PoolCache]:
    """Reference max pooling with loops.

    Args:
        x: ``(N, C, H, W)`` input.
        kernel_size: window ``HH x WW`` (an int for a square window).
        stride: step between windows; defaults to the window size (no overlap).
        pad: ``-inf`` added on each side of both spatial axes (at most half the window).

    Returns:
        ``out (N, C, Ho, Wo)`` and the cache for :func:`max_pool_backward_naive`.
    """
    (kh, kw), (sh, sw), ho, wo = _pool_geometry(x, kernel_size, stride, pad)
    n, c = x.shape[:2]
    xp = _pad(x, pad, -np.inf)
    out = np.empty((n, c, ho, wo), dtype=x.dtype)
    for ni in range(n):
        for ci in range(c):
            for i in range(ho):
                for j in range(wo):
                    out[ni, ci, i, j] = xp[ni, ci, i * sh : i * sh + kh, j * sw : j * sw + kw].max()
    return out, PoolCache(x, (kh, kw), (sh, sw), pad, None)


def max_pool_backward_naive(dout: np.ndarray, cache: PoolCache) -> np.ndarray:
    """Reference max-pooling backward: ``dout (N, C, Ho, Wo) -> dx (N, C, H, W)``."""
    x, (kh, kw), (sh, sw), pad, _ = cache
    h, w = x.shape[2:]
    n, c, ho, wo = dout.shape
    xp = _pad(x, pad, -np.inf)
    dxp = np.zeros(xp.shape, dtype=dout.dtype)
    for ni in range(n):
        for ci in range(c):
            for i in range(ho):
                for j in range(wo):
                    window = xp[ni, ci, i * sh : i * sh + kh, j * sw : j * sw + kw]
                    # The max gate routes the gradient to its winner (the first one on a tie);
                    # `+=` because overlapping windows can share a winner.
                    a, bb = np.unravel_index(np.argmax(window), window.shape)
                    dxp[ni, ci, i * sh + a, j * sw + bb] += dout[ni, ci, i, j]
    return dxp[:, :, pad : pad + h, pad : pad + w]


def avg_pool_forward_naive(
    x: np.ndarray, *, kernel_size: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None, pad: int = 0
) -> tuple[np.ndarray, PoolCache]:
    """Reference average pooling with loops; zero padding counts in the average.

    Args and returns as :func:`max_pool_forward_naive` (padding with zeros).
    """
    (kh, kw), (sh, sw), ho, wo = _pool_geometry(x, kernel_size, stride, pad)
    n, c = x.shape[:2]
    xp = _pad(x, pad)
    out = np.empty((n, c, ho, wo), dtype=x.dtype)
    for ni in range(n):
        for ci in range(c):
            for i in range(ho):
                for j in range(wo):
                    out[ni, ci, i, j] = xp[ni, ci, i * sh : i * sh + kh, j * sw : j * sw + kw].sum() / (kh * kw)
    return out, PoolCache(x, (kh, kw), (sh, sw), pad, None)


def avg_pool_backward_naive(dout: np.ndarray, cache: PoolCache) -> np.ndarray:
    """Reference average-pooling backward: ``dout (N, C, Ho, Wo) -> dx (N, C, H, W)``."""
    x, (kh, kw), (sh, sw), pad, _ = cache
    h, w = x.shape[2:]
    n, c, ho, wo = dout.shape
    dxp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=dout.dtype)
    for ni in range(n):
        for ci in range(c):
            for i in range(ho):
                for j in range(wo):
                    # Each of the kh*kw inputs contributed 1/(kh*kw) of the output.
                    dxp[ni, ci, i * sh : i * sh + kh, j * sw : j * sw + kw] += dout[ni, ci, i, j] / (kh * kw)
    return dxp[:, :, pad : pad + h, pad : pad + w]


def max_pool_forward_im2col(
    x: np.ndarray, *, kernel_size: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None, pad: int = 0
) -> tuple[np.ndarray, PoolCache]:
    """Vectorized max pooling: args and returns as :func:`max_pool_forward_naive`."""
    (kh, kw), (sh, sw), ho, wo = _pool_geometry(x, kernel_size, stride, pad)
    n, c = x.shape[:2]
    cols = im2col(x, kh, kw, stride=(sh, sw), pad=pad, pad_value=-np.inf)
    cols = cols.reshape(n * ho * wo, c, kh * kw)  # (N*Ho*Wo, C*kh*kw) -> (N*Ho*Wo, C, kh*kw): one window per channel
    argmax = cols.argmax(axis=2)  # (N*Ho*Wo, C); argmax picks the first maximum, as the naive version
    out = np.take_along_axis(cols, argmax[:, :, None], axis=2)[:, :, 0]  # (N*Ho*Wo, C)
    out = out.reshape(n, ho, wo, c).transpose(0, 3, 1, 2)  # -> (N, C, Ho, Wo)
    return np.ascontiguousarray(out), PoolCache(x, (kh, kw), (sh, sw), pad, argmax)


def max_pool_backward_im2col(dout: np.ndarray, cache: PoolCache) -> np.ndarray:
    """Vectorized max-pooling backward: ``dout (N, C, Ho, Wo) -> dx (N, C, H, W)``."""
    x, (kh, kw), stride, pad, argmax = cache
    if argmax is None:
        raise ValueError("max_pool_backward_im2col needs the cache of max_pool_forward_im2col")
    c = x.shape[1]
    dout_mat = dout.transpose(0, 2, 3, 1).reshape(-1, c)  # (N, C, Ho, Wo) -> (N*Ho*Wo, C)
    dcols = np.zeros((dout_mat.shape[0], c, kh * kw), dtype=dout.dtype)
    np.put_along_axis(dcols, argmax[:, :, None], dout_mat[:, :, None], axis=2)  # gradient to each window's winner
    return col2im(dcols.reshape(dout_mat.shape[0], c * kh * kw), x.shape, kh, kw, stride=stride, pad=pad)


def avg_pool_forward_im2col(
    x: np.ndarray, *, kernel_size: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None, pad: int = 0
) -> tuple[np.ndarray, PoolCache]:
    """Vectorized average pooling: args and returns as :func:`avg_pool_forward_naive`."""
    (kh, kw), (sh, sw), ho, wo = _pool_geometry(x, kernel_size, stride, pad)
    n, c = x.shape[:2]
    cols = im2col(x, kh, kw, stride=(sh, sw), pad=pad).reshape(n * ho * wo, c, kh * kw)
    out = cols.mean(axis=2).reshape(n, ho, wo, c).transpose(0, 3, 1, 2)  # (N*Ho*Wo, C) -> (N, C, Ho, Wo)
    return np.ascontiguousarray(out), PoolCache(x, (kh, kw), (sh, sw), pad, None)


def avg_pool_backward_im2col(dout: np.ndarray, cache: PoolCache) -> np.ndarray:
    """Vectorized average-pooling backward: ``dout (N, C, Ho, Wo) -> dx (N, C, H, W)``."""
    x, (kh, kw), stride, pad, _ = cache
    c = x.shape[1]
    dout_mat = dout.transpose(0, 2, 3, 1).reshape(-1, c)  # (N*Ho*Wo, C)
    # Every window entry gets 1/(kh*kw) of its output's gradient: (N*Ho*Wo, C) -> (N*Ho*Wo, C, kh*kw).
    dcols = np.repeat(dout_mat[:, :, None] / (kh * kw), kh * kw, axis=2)
    return col2im(dcols.reshape(dout_mat.shape[0], c * kh * kw), x.shape, kh, kw, stride=stride, pad=pad)
