"""Upsampling against F.interpolate, max_unpool2d and conv_transpose2d (outputs and gradients); adjointness."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detkit.lectures.upsample import (
    ScratchConvTranspose2d,
    bed_of_nails,
    nearest_upsample,
    scratch_conv_transpose2d,
    scratch_max_unpool2d,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (torch's thread pool spins badly on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def same_outputs_and_grads(ours, theirs, *inputs: torch.Tensor) -> None:
    """``ours(*inputs)`` equals ``theirs(*inputs)``, and so do the gradients of a random projection."""
    a = [t.clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
    b = [t.clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
    out_a, out_b = ours(*a), theirs(*b)
    torch.testing.assert_close(out_a, out_b)
    upstream = torch.randn(out_a.shape, dtype=out_a.dtype, generator=torch.Generator().manual_seed(0))
    (out_a * upstream).sum().backward()
    (out_b * upstream).sum().backward()
    for ta, tb in zip(a, b):
        if ta.is_floating_point():
            torch.testing.assert_close(ta.grad, tb.grad)


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize("scale", [2, 3])
def test_nearest_upsample_by_scale_matches_interpolate(scale):
    same_outputs_and_grads(
        lambda x: nearest_upsample(x, scale),
        lambda x: F.interpolate(x, scale_factor=scale, mode="nearest"),
        rand(2, 3, 4, 5),
    )


@pytest.mark.parametrize(
    ("in_size", "out_size"),
    [((4, 5), (8, 10)), ((5, 7), (13, 4)), ((3, 6), (9, 15)), ((7, 7), (7, 7)), ((6, 9), (4, 5))],
)
def test_nearest_upsample_to_size_matches_interpolate(in_size, out_size):
    same_outputs_and_grads(
        lambda x: nearest_upsample(x, size=out_size), lambda x: F.interpolate(x, size=out_size, mode="nearest"),
        rand(1, 2, *in_size),
    )
    with pytest.raises(ValueError, match="exactly one"):
        nearest_upsample(rand(1, 2, *in_size), 2, size=out_size)


@pytest.mark.parametrize("stride", [2, 3])
def test_bed_of_nails_is_a_strided_transpose_conv_with_a_unit_kernel(stride):
    c = 3
    unit = torch.ones(c, 1, 1, 1, dtype=torch.float64)  # depthwise 1x1 kernel of ones
    same_outputs_and_grads(
        lambda x: bed_of_nails(x, stride),
        lambda x: F.conv_transpose2d(x, unit, stride=stride, output_padding=stride - 1, groups=c),
        rand(2, c, 3, 4),
    )
    x = rand(1, c, 2, 2)
    out = bed_of_nails(x, stride)
    assert out.shape == (1, c, 2 * stride, 2 * stride)
    assert torch.equal(out[..., ::stride, ::stride], x)
    out[..., ::stride, ::stride] = 0
    assert torch.all(out == 0)  # zeros everywhere else


@pytest.mark.parametrize(
    ("shape", "kernel", "stride", "padding"),
    [((2, 3, 6, 8), 2, 2, 0), ((1, 2, 7, 7), 3, 2, 1), ((2, 2, 5, 6), 3, 1, 0), ((1, 1, 9, 5), (3, 2), (2, 1), (1, 0))],
)
def test_max_unpool_matches_torch(shape, kernel, stride, padding):
    x = rand(*shape)
    pooled, indices = F.max_pool2d(x, kernel, stride, padding, return_indices=True)
    size = shape[-2:]
    same_outputs_and_grads(
        lambda p: scratch_max_unpool2d(p, indices, kernel, stride, padding, output_size=size),
        lambda p: F.max_unpool2d(p, indices, kernel, stride, padding, output_size=size),
        pooled,
    )
    module = nn.MaxUnpool2d(kernel, stride, padding)
    torch.testing.assert_close(scratch_max_unpool2d(pooled, indices, kernel, stride, padding), module(pooled, indices))


def test_max_unpool_puts_maxima_back_in_place():
    x = torch.tensor([[[[1.0, 5.0, 2.0, 0.0], [3.0, 4.0, 8.0, 1.0]]]])
    pooled, indices = F.max_pool2d(x, 2, return_indices=True)
    expected = torch.tensor([[[[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 8.0, 0.0]]]])
    assert torch.equal(scratch_max_unpool2d(pooled, indices, 2), expected)


CONV_T_CASES = [
    # (stride, padding, output_padding, dilation, kernel)
    (1, 0, 0, 1, (3, 3)),
    (2, 0, 0, 1, (3, 3)),
    (2, 1, 1, 1, (4, 3)),
    (3, 2, 2, 1, (3, 5)),
    ((2, 3), (1, 0), (0, 2), 1, (3, 3)),
    (2, 1, 0, 2, (3, 2)),
    (1, 0, 1, 2, (3, 3)),  # output_padding >= stride is allowed when smaller than the dilation
    (2, 2, 1, 1, (2, 2)),  # output_padding < padding: the extra row comes back from the cropped border
    (2, 0, 1, 1, (3, 3)),  # output_padding > padding: the extra row is zeros (plus bias)
]


@pytest.mark.parametrize(("stride", "padding", "output_padding", "dilation", "kernel"), CONV_T_CASES)
def test_conv_transpose_matches_torch(stride, padding, output_padding, dilation, kernel):
    x, w, b = rand(2, 3, 5, 4), rand(3, 2, *kernel), rand(2)
    args = (stride, padding, output_padding)

    def ours(x, w, b):
        return scratch_conv_transpose2d(x, w, b, *args, dilation=dilation)

    def theirs(x, w, b):
        return F.conv_transpose2d(x, w, b, *args, dilation=dilation)

    same_outputs_and_grads(ours, theirs, x, w, b)


@pytest.mark.parametrize(("stride", "padding", "dilation"), [(1, 0, 1), (2, 1, 1), (3, 0, 2)])
def test_conv_transpose_is_the_adjoint_of_conv(stride, padding, dilation):
    # <conv(y), x> = <y, conv_transpose(x)> for every x, y: the defining property of the transpose.
    w = rand(3, 2, 3, 3)  # conv2d: 2 -> 3 channels; transpose: 3 -> 2
    y = rand(2, 2, 11, 10)
    conv_y = F.conv2d(y, w, stride=stride, padding=padding, dilation=dilation)
    x = rand(*conv_y.shape)
    # output_padding recovers the input size that the conv's floor division lost.
    h_t = (conv_y.shape[2] - 1) * stride - 2 * padding + dilation * 2 + 1
    w_t = (conv_y.shape[3] - 1) * stride - 2 * padding + dilation * 2 + 1
    op = (11 - h_t, 10 - w_t)
    x_t = scratch_conv_transpose2d(x, w, stride=stride, padding=padding, output_padding=op, dilation=dilation)
    assert x_t.shape == y.shape
    torch.testing.assert_close((conv_y * x).sum(), (y * x_t).sum())


def scatter_reference(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """Slow reference: every input value adds value * kernel into the output at stride, then crop padding."""
    n, c_in, h, wd = x.shape
    _, c_out, k, _ = w.shape
    full = torch.zeros(n, c_out, (h - 1) * stride + k, (wd - 1) * stride + k, dtype=x.dtype)
    for i in range(h):
        for j in range(wd):
            for ci in range(c_in):
                full[:, :, i * stride : i * stride + k, j * stride : j * stride + k] += (
                    x[:, ci, i, j][:, None, None, None] * w[ci]
                )
    return full[:, :, padding : full.shape[2] - padding, padding : full.shape[3] - padding]


def test_conv_transpose_matches_the_scatter_picture_and_gradchecks():
    x, w, b = rand(1, 2, 3, 3), rand(2, 3, 3, 3), rand(3)
    torch.testing.assert_close(scratch_conv_transpose2d(x, w, stride=2, padding=1), scatter_reference(x, w, 2, 1))
    inputs = tuple(t.clone().requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: scratch_conv_transpose2d(x, w, b, stride=2, padding=1), inputs)


def test_conv_transpose_module_loads_torch_state_dict():
    torch.manual_seed(0)
    theirs = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1).double()
    ours = ScratchConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1).double()
    ours.load_state_dict(theirs.state_dict())
    x = rand(2, 3, 5, 5)
    torch.testing.assert_close(ours(x), theirs(x))
    assert ours(x).shape == (2, 4, 10, 10)
    with pytest.raises(ValueError, match="output_padding"):
        scratch_conv_transpose2d(x, ours.weight, stride=2, output_padding=2)
