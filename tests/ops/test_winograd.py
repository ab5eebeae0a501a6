"""Winograd convolution: the oracles are ``torch.nn.functional.conv2d`` in float64 and exact fractions."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from detkit.ops.gemm_conv import GemmGradConv2d
from detkit.ops.winograd import (
    POINTS,
    WinogradConv2d,
    filter_transform,
    use_winograd,
    winograd_conv2d,
    winograd_eligible,
    winograd_matrices,
)


def _matvec(matrix: list[list[Fraction]], vector: list[Fraction]) -> list[Fraction]:
    return [sum((a * b for a, b in zip(row, vector, strict=True)), Fraction(0)) for row in matrix]


@pytest.mark.parametrize("tile", sorted(POINTS))
def test_matrices_compute_the_correlation_exactly(tile):
    """``A^T [(G g) * (B^T d)]`` equals ``y_i = sum_k d_(i+k) g_k`` in exact arithmetic."""
    bt, g, at = winograd_matrices(POINTS[tile])
    shapes = [(len(m), len(m[0])) for m in (bt, g, at)]
    assert shapes == [(tile + 2, tile + 2), (tile + 2, 3), (tile, tile + 2)]
    for seed in range(3):
        rng = torch.Generator().manual_seed(seed)
        d = [Fraction(int(v)) for v in torch.randint(-9, 10, (tile + 2,), generator=rng)]
        taps = [Fraction(int(v), 7) for v in torch.randint(-9, 10, (3,), generator=rng)]
        products = [a * b for a, b in zip(_matvec(g, taps), _matvec(bt, d), strict=True)]
        assert _matvec(at, products) == [sum(d[i + k] * taps[k] for k in range(3)) for i in range(tile)]


def _case(shape, channels_out, *, channels_last, dtype=torch.float64, seed=0):
    rng = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=rng, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels_out, shape[1], 3, 3, generator=rng, dtype=dtype) / (3 * shape[1] ** 0.5)
    bias = torch.randn(channels_out, generator=rng, dtype=dtype)
    return x, weight, bias


@pytest.mark.parametrize("tile", sorted(POINTS))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (2, 5, 9, 11), (1, 4, 1, 1), (2, 6, 3, 14), (1, 2, 13, 2)])
def test_values_and_gradients_match_conv2d(tile, channels_last, shape):
    """Sizes that are and are not multiples of the tile, maps smaller than one tile, a batch of two."""
    x, weight, bias = _case(shape, 7, channels_last=channels_last)
    x.requires_grad_()
    weight.requires_grad_()
    bias.requires_grad_()
    ours = winograd_conv2d(x, weight, bias, tile=tile)
    ref = F.conv2d(x, weight, bias, padding=1)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert ours.is_contiguous(memory_format=layout)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad((ours * grad).sum(), (x, weight, bias))
    want = torch.autograd.grad((ref * grad).sum(), (x, weight, bias))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    assert got[0].is_contiguous(memory_format=layout)  # the input gradient keeps the input's memory format


def test_gradcheck():
    x, weight, bias = _case((2, 3, 6, 5), 2, channels_last=False)
    for tensor in (x, weight, bias):
        tensor.requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: winograd_conv2d(*a, tile=4), (x, weight, bias))
    filters = filter_transform(weight.detach()).requires_grad_()  # the kept-filters path differentiates too
    assert torch.autograd.gradcheck(lambda a, f: winograd_conv2d(a, weight.detach(), filters=f), (x, filters))


@pytest.mark.parametrize(("tile", "bound"), [(2, 2e-6), (4, 3e-5), (6, 2e-4)])
def test_float32_rounding_stays_small(tile, bound):
    """Relative to the output's range, against float64; the direct convolution's is ~1.5e-6."""
    x, weight, bias = _case((1, 64, 40, 52), 64, channels_last=True, dtype=torch.float32)
    exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    error = (winograd_conv2d(x, weight, bias, tile=tile).double() - exact).abs().max() / exact.abs().max()
    assert error < bound


def test_unknown_tile_and_wrong_shapes_are_refused():
    x, weight, _ = _case((1, 3, 8, 8), 4, channels_last=False)
    with pytest.raises(ValueError, match="tile size 3"):
        winograd_conv2d(x, weight, tile=3)
    with pytest.raises(ValueError, match="3, 3"):
        winograd_conv2d(x, torch.zeros(4, 3, 5, 5, dtype=x.dtype))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.wide = nn.Conv2d(16, 16, 3, padding=1)
        self.strided = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.dilated = nn.Conv2d(16, 16, 3, padding=2, dilation=2)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dilated(self.strided(self.wide(self.stem(x)))))


@pytest.fixture
def every_map(monkeypatch):
    """Winograd on maps of any size, so that small test maps take its path."""
    monkeypatch.setattr(WinogradConv2d, "min_tiles", 1)
    monkeypatch.setattr(WinogradConv2d, "min_training_tiles", 1)


def test_use_winograd_swaps_only_eligible_convs_and_shares_parameters(every_map):
    torch.manual_seed(0)
    net = _Net()
    params = dict(net.named_parameters())
    x = torch.randn(2, 3, 20, 24)
    with torch.no_grad():
        before = net(x)
    # wide and head[1] run Winograd; the strided conv takes GEMM gradients; the 3-channel stem stays
    assert use_winograd(net, min_channels=16) == 3
    assert isinstance(net.wide, WinogradConv2d) and isinstance(net.head[1], WinogradConv2d)
    assert type(net.strided) is GemmGradConv2d
    assert net.strided.stride == (2, 2) and net.strided.padding == (1, 1)
    assert type(net.stem) is type(net.dilated) is nn.Conv2d
    assert {k: id(v) for k, v in net.named_parameters()} == {k: id(v) for k, v in params.items()}
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-4, atol=1e-5)
    assert use_winograd(net, enabled=False) == 3
    assert all(type(m) is nn.Conv2d for m in net.modules() if isinstance(m, nn.Conv2d))
    assert {k: id(v) for k, v in net.named_parameters()} == {k: id(v) for k, v in params.items()}


def test_eligibility_rules():
    assert winograd_eligible(nn.Conv2d(128, 128, 3, padding=1))
    assert winograd_eligible(nn.Conv2d(256, 128, 3, padding="same"))
    assert not winograd_eligible(nn.Conv2d(64, 128, 3, padding=1))  # narrow: the transforms cost more
    assert not winograd_eligible(nn.Conv2d(128, 128, 3, padding=0))
    assert not winograd_eligible(nn.Conv2d(128, 128, 3, padding=1, groups=2))
    assert not winograd_eligible(nn.Conv2d(128, 128, 3, padding=1, padding_mode="reflect"))
    assert not winograd_eligible(nn.Conv2d(128, 128, 1))


def test_small_maps_autocast_and_export_take_the_direct_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    twin = WinogradConv2d.from_conv(conv)
    small = torch.randn(1, 128, 8, 8)  # 4 tiles, fewer than min_tiles
    with torch.no_grad():
        assert torch.equal(twin(small), conv(small))
        big = torch.randn(1, 128, 40, 40)
        assert not torch.equal(twin(big), conv(big))  # the Winograd path: same values, other rounding
        torch.testing.assert_close(twin(big), conv(big), rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(twin(big), conv(big))
        traced = torch.jit.trace(twin, big, check_trace=False)
        assert "aten::_convolution" in str(traced.graph) or "aten::conv2d" in str(traced.graph)


def test_kept_filters_follow_in_place_weight_updates(every_map):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    twin = WinogradConv2d.from_conv(conv)
    x = torch.randn(1, 16, 12, 12)
    with torch.no_grad():
        twin(x)
        conv.weight.mul_(-2)  # an optimizer step: the same tensor, a new version
        torch.testing.assert_close(twin(x), conv(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_a_winograd_network_trains_like_the_direct_one(every_map, layout):
    """Same initial weights, same batches, SGD: the losses agree step by step, and fall.

    Channels-last, the strided convolution takes GEMM weight gradients too.
    """
    torch.manual_seed(0)
    direct = _Net()
    winograd = _Net()
    winograd.load_state_dict(direct.state_dict())
    assert use_winograd(winograd, min_channels=16) == 3
    images = torch.randn(4, 3, 24, 24).contiguous(memory_format=layout)
    with torch.no_grad():
        target = _Net()(images)  # a teacher: a target the student can reach
    losses = {}
    for name, net in (("direct", direct), ("winograd", winograd)):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
        losses[name] = []
        for _ in range(30):
            loss = F.mse_loss(net(images), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[name].append(float(loss.detach()))
    torch.testing.assert_close(torch.tensor(losses["winograd"]), torch.tensor(losses["direct"]), rtol=1e-3, atol=0)
    assert losses["winograd"][-1] < 0.5 * losses["winograd"][0]


def test_second_derivatives_gradgradcheck():
    """The backward passes are plain differentiable ops, so gradient penalties work through them."""
    x, weight, bias = _case((2, 3, 6, 5), 2, channels_last=True)
    for tensor in (x, weight, bias):
        tensor.requires_grad_()
    assert torch.autograd.gradgradcheck(lambda *a: winograd_conv2d(*a, tile=4), (x, weight, bias))


def test_frozen_weights_use_the_kept_filters_and_still_pass_input_gradients(every_map):
    """Saliency through a frozen network: only the input needs a gradient."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1).requires_grad_(False)
    twin = WinogradConv2d.from_conv(conv)
    x = torch.randn(1, 16, 12, 12, requires_grad=True)
    (got,) = torch.autograd.grad(twin(x).square().sum(), x)
    assert twin._filters is not None  # transformed once, kept
    (want,) = torch.autograd.grad(conv(x).square().sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
