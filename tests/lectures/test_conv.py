"""Convolution and pooling (naive and im2col) against torch.nn.functional and torch.autograd, float64."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detkit.lectures.conv import (
    avg_pool_backward_im2col,
    avg_pool_backward_naive,
    avg_pool_forward_im2col,
    avg_pool_forward_naive,
    col2im,
    conv_backward_im2col,
    conv_backward_naive,
    conv_forward_im2col,
    conv_forward_naive,
    im2col,
    max_pool_backward_im2col,
    max_pool_backward_naive,
    max_pool_forward_im2col,
    max_pool_forward_naive,
    output_size,
)

# (x shape (N, C, H, W), w shape (F, C, HH, WW), stride, pad); odd sizes make the floor in Ho matter.
CONV_CASES = [
    ((2, 3, 5, 5), (4, 3, 3, 3), 1, 1),
    ((1, 2, 7, 6), (3, 2, 3, 2), 2, 0),  # (7 - 3) / 2 + 1 = 3; (6 - 2) / 2 + 1 = 3
    ((2, 1, 8, 7), (2, 1, 4, 4), 3, 2),  # (8 + 4 - 4) / 3 + 1 = 3.67 -> 3: the last rows are dropped
    ((1, 3, 4, 4), (2, 3, 1, 1), 1, 0),  # 1x1 convolution
]
CONV_IMPLS = [(conv_forward_naive, conv_backward_naive), (conv_forward_im2col, conv_backward_im2col)]


@pytest.mark.parametrize("impl", CONV_IMPLS, ids=["naive", "im2col"])
@pytest.mark.parametrize("x_shape, w_shape, stride, pad", CONV_CASES)
def test_conv_matches_torch_forward_and_autograd(
    impl: tuple[Callable[..., Any], Callable[..., Any]], x_shape: tuple, w_shape: tuple, stride: int, pad: int
) -> None:
    forward, backward = impl
    rng = np.random.default_rng(sum(x_shape) + stride)
    x, w, b = rng.normal(size=x_shape), rng.normal(size=w_shape), rng.normal(size=w_shape[0])
    out, cache = forward(x, w, b, stride=stride, pad=pad)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ref = F.conv2d(tx, tw, tb, stride=stride, padding=pad)
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    dout = rng.normal(size=out.shape)
    ref.backward(torch.tensor(dout))
    dx, dw, db = backward(dout, cache)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-10, atol=1e-12)


# (x shape, kernel_size, stride, pad)
POOL_CASES = [
    ((2, 3, 4, 4), 2, 2, 0),  # the lecture's 2x2 stride-2 pooling
    ((1, 2, 7, 7), 3, 2, 1),  # overlapping windows and padding
    ((2, 1, 5, 6), (2, 3), 1, 0),  # non-square window, stride 1: heavy overlap
    ((1, 2, 5, 5), 2, 2, 1),  # padding and a dropped last column
]
MAX_IMPLS = [(max_pool_forward_naive, max_pool_backward_naive), (max_pool_forward_im2col, max_pool_backward_im2col)]
AVG_IMPLS = [(avg_pool_forward_naive, avg_pool_backward_naive), (avg_pool_forward_im2col, avg_pool_backward_im2col)]


def _check_pool(forward: Callable[..., Any], backward: Callable[..., Any], torch_pool: Callable[..., torch.Tensor],
                x: np.ndarray, kernel: Any, stride: int, pad: int) -> None:  # fmt: skip
    out, cache = forward(x, kernel_size=kernel, stride=stride, pad=pad)
    tx = torch.tensor(x, requires_grad=True)
    ref = torch_pool(tx, kernel, stride=stride, padding=pad)
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-12, atol=1e-14)
    dout = np.random.default_rng(1).normal(size=out.shape)
    ref.backward(torch.tensor(dout))
    np.testing.assert_allclose(backward(dout, cache), tx.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("impl", MAX_IMPLS, ids=["naive", "im2col"])
@pytest.mark.parametrize("x_shape, kernel, stride, pad", POOL_CASES)
def test_max_pool_matches_torch(impl: tuple, x_shape: tuple, kernel: Any, stride: int, pad: int) -> None:
    # Negative inputs: a zero pad (instead of -inf) would win the max and be caught here.
    x = np.random.default_rng(0).normal(size=x_shape) - 1.0
    _check_pool(*impl, F.max_pool2d, x, kernel, stride, pad)


@pytest.mark.parametrize("impl", MAX_IMPLS, ids=["naive", "im2col"])
def test_max_pool_ties_route_to_first_max_like_torch(impl: tuple) -> None:
    # Integer data with many equal values inside overlapping windows.
    x = np.random.default_rng(2).integers(0, 2, size=(1, 2, 6, 6)).astype(np.float64)
    _check_pool(*impl, F.max_pool2d, x, 3, 1, 1)


@pytest.mark.parametrize("impl", AVG_IMPLS, ids=["naive", "im2col"])
@pytest.mark.parametrize("x_shape, kernel, stride, pad", POOL_CASES)
def test_avg_pool_matches_torch(impl: tuple, x_shape: tuple, kernel: Any, stride: int, pad: int) -> None:
    x = np.random.default_rng(3).normal(size=x_shape)
    _check_pool(*impl, F.avg_pool2d, x, kernel, stride, pad)  # torch's default count_include_pad=True


def test_im2col_and_col2im_are_adjoint() -> None:
    # <im2col(x), c> == <x, col2im(c)> for all x, c: col2im is exactly the transpose (dot-product test).
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 7, 5))
    cols = im2col(x, 3, 2, stride=2, pad=1)
    c = rng.normal(size=cols.shape)
    lhs = float((cols * c).sum())
    rhs = float((x * col2im(c, x.shape, 3, 2, stride=2, pad=1)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12)
    # And the rows are torch's unfold, transposed: (N, C*kh*kw, L) -> (N*L, C*kh*kw).
    ref = F.unfold(torch.tensor(x), (3, 2), stride=2, padding=1).transpose(1, 2).reshape(cols.shape)
    np.testing.assert_allclose(cols, ref.numpy())


def test_output_size_floors_and_rejects_windows_that_do_not_fit() -> None:
    assert output_size(7, 2, 2, 0) == 3
    assert output_size(32, 5, 1, 2) == 32  # the lecture's "same" padding: P = (F - 1) / 2
    with pytest.raises(ValueError, match="does not fit"):
        output_size(2, 5, 1, 1)
    with pytest.raises(ValueError, match="half the window"):
        max_pool_forward_im2col(np.zeros((1, 1, 4, 4)), kernel_size=2, stride=2, pad=2)
