"""The GEMM weight gradient: im2col against F.unfold, values and gradients against F.conv2d."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from detkit.ops.gemm_conv import GemmGradConv2d, conv2d_gemm_grad, gemm_grad_applies, gemm_grad_eligible, im2col

CASES = [  # (N, C, H, W), K, kernel, stride, padding
    ((2, 5, 9, 11), 4, (3, 3), (2, 2), (1, 1)),  # the strided 3x3 of a ResNet stage
    ((1, 6, 8, 8), 3, (3, 3), (1, 1), (1, 1)),
    ((2, 3, 13, 10), 4, (7, 7), (2, 2), (3, 3)),  # a ResNet stem
    ((1, 4, 7, 9), 2, (1, 3), (1, 2), (0, 1)),  # rectangular kernel, unequal strides
    ((1, 4, 6, 6), 5, (3, 3), (1, 1), (0, 0)),  # no padding
    ((2, 6, 5, 7), 3, (1, 1), (1, 1), (0, 0)),  # pointwise: both gradients are GEMMs
    ((2, 6, 9, 8), 4, (1, 1), (2, 2), (0, 0)),  # a ResNet projection shortcut
]


def _channels_last(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("shape", "out_channels", "kernel", "stride", "padding"), CASES)
def test_im2col_holds_the_patches_unfold_does(shape, out_channels, kernel, stride, padding):
    torch.manual_seed(0)
    x = _channels_last(*shape)
    cols = im2col(x, kernel, stride, padding)
    unfolded = F.unfold(x, kernel, padding=padding, stride=stride)  # (N, C*kh*kw, L), ordered (c, ky, kx)
    n, channels = shape[:2]
    expected = unfolded.view(n, channels, kernel[0] * kernel[1], -1).permute(0, 3, 2, 1).reshape(cols.shape)
    assert torch.equal(cols, expected)


@pytest.mark.parametrize(("shape", "out_channels", "kernel", "stride", "padding"), CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_values_and_gradients_match_conv2d(shape, out_channels, kernel, stride, padding, with_bias):
    torch.manual_seed(0)
    x = _channels_last(*shape).requires_grad_()
    weight = _channels_last(out_channels, shape[1], *kernel).requires_grad_()
    bias = torch.randn(out_channels, dtype=torch.float64, requires_grad=True) if with_bias else None
    grad = torch.randn_like(F.conv2d(x, weight, bias, stride, padding))
    assert gemm_grad_applies(x, weight)
    ours = conv2d_gemm_grad(x, weight, bias, stride, padding)
    assert ours.grad_fn is not None and "GemmWeightGrad" in type(ours.grad_fn).__name__
    inputs = [t for t in (x, weight, bias) if t is not None]
    got = torch.autograd.grad(ours, inputs, grad)
    reference = F.conv2d(x, weight, bias, stride, padding)
    expected = torch.autograd.grad(reference, inputs, grad)
    torch.testing.assert_close(ours, reference)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    assert got[1].is_contiguous(memory_format=torch.channels_last)  # the weight's own layout


def test_gradcheck():
    torch.manual_seed(0)
    x = _channels_last(1, 3, 6, 5).requires_grad_()
    weight = _channels_last(2, 3, 3, 3).requires_grad_()
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w, b: conv2d_gemm_grad(a, w, b, (2, 2), (1, 1)), (x, weight, bias))


def test_a_frozen_weight_an_nchw_input_and_autocast_take_the_plain_convolution():
    torch.manual_seed(0)
    weight = _channels_last(4, 3, 3, 3, dtype=torch.float32).requires_grad_()
    x = _channels_last(1, 3, 8, 8, dtype=torch.float32)
    assert gemm_grad_applies(x, weight)
    assert not gemm_grad_applies(x.contiguous(), weight)  # NCHW: oneDNN's weight gradient is fine there
    assert not gemm_grad_applies(x, weight.detach())  # no weight gradient to compute
    with torch.no_grad():
        assert not gemm_grad_applies(x, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not gemm_grad_applies(x, weight)
    out = conv2d_gemm_grad(x.contiguous(), weight, None, (1, 1), (1, 1))
    assert "GemmWeightGrad" not in type(out.grad_fn).__name__


def test_gemm_grad_conv2d_is_a_drop_in_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 4, 3, stride=2, padding=1).to(memory_format=torch.channels_last)
    twin = GemmGradConv2d(16, 4, 3, stride=2, padding=1)
    twin.load_state_dict(conv.state_dict())
    x = _channels_last(2, 16, 9, 9, dtype=torch.float32)
    torch.testing.assert_close(twin(x), conv(x))
    assert "GemmWeightGrad" in type(twin(x).grad_fn).__name__
    twin(x).square().sum().backward()
    conv(x).square().sum().backward()
    torch.testing.assert_close(twin.weight.grad, conv.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(twin.bias.grad, conv.bias.grad, rtol=1e-5, atol=1e-5)


def test_eligibility():
    assert gemm_grad_eligible(nn.Conv2d(16, 4, 3, stride=2, padding=1))
    assert gemm_grad_eligible(nn.Conv2d(16, 4, 1, stride=2))
    assert not gemm_grad_eligible(nn.Conv2d(3, 64, 7, stride=2, padding=3))  # a stem: im2col of thin copies
    assert not gemm_grad_eligible(nn.Conv2d(16, 16, 3, padding=1, groups=2))
    assert not gemm_grad_eligible(nn.Conv2d(16, 16, 3, padding=2, dilation=2))
    assert not gemm_grad_eligible(nn.Conv2d(16, 16, 3, padding="same"))
    assert not gemm_grad_eligible(nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect"))
