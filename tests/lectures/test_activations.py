"""Lecture-6 activations against torch's functions and modules, and gradcheck (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detkit.lectures.activations import (
    Maxout,
    ScratchELU,
    ScratchLeakyReLU,
    ScratchPReLU,
    ScratchReLU,
    ScratchSigmoid,
    ScratchTanh,
    maxout,
    scratch_elu,
    scratch_leaky_relu,
    scratch_prelu,
    scratch_relu,
    scratch_sigmoid,
    scratch_tanh,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (torch's thread pool spins badly on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ELEMENTWISE = [
    pytest.param(scratch_sigmoid, torch.sigmoid, id="sigmoid"),
    pytest.param(scratch_tanh, torch.tanh, id="tanh"),
    pytest.param(scratch_relu, torch.relu, id="relu"),
    pytest.param(lambda x: scratch_leaky_relu(x, 0.1), lambda x: F.leaky_relu(x, 0.1), id="leaky_relu"),
    pytest.param(lambda x: scratch_elu(x, 1.3), lambda x: F.elu(x, alpha=1.3), id="elu"),
]


def away_from_kink(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random float64 values with |x| >= 0.1, so finite differences never straddle the kink at 0."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x + 0.1 * torch.sign(x)


@pytest.mark.parametrize(("ours", "theirs"), ELEMENTWISE)
def test_elementwise_forward_and_backward_match_torch(ours, theirs):
    x = torch.cat([away_from_kink(200), torch.tensor([0.0, 1e-12, -1e-12, 30.0, -30.0, 800.0, -800.0])])
    x = x.double()
    upstream = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), theirs(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-15)
    (y1 * upstream).sum().backward()
    (y2 * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("ours", "theirs"), ELEMENTWISE)
def test_elementwise_gradcheck(ours, theirs):
    x = away_from_kink(3, 4).requires_grad_()
    assert torch.autograd.gradcheck(ours, (x,))


def test_modules_match_torch_modules():
    x = away_from_kink(5, 6)
    pairs = [
        (ScratchSigmoid(), nn.Sigmoid()),
        (ScratchTanh(), nn.Tanh()),
        (ScratchReLU(), nn.ReLU()),
        (ScratchLeakyReLU(0.2), nn.LeakyReLU(0.2)),
        (ScratchELU(0.7), nn.ELU(0.7)),
    ]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("num_parameters", [1, 3])
def test_prelu_matches_torch_outputs_and_gradients(num_parameters):
    ours = ScratchPReLU(num_parameters).double()
    theirs = nn.PReLU(num_parameters).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor([0.1, 0.25, -0.3][:num_parameters], dtype=torch.float64))
    ours.load_state_dict(theirs.state_dict())  # same parameter name and shape as torch
    x = away_from_kink(4, 3, 5, 2)
    upstream = torch.randn(x.shape, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), theirs(x2)
    torch.testing.assert_close(y1, y2)
    (y1 * upstream).sum().backward()
    (y2 * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)


def test_prelu_slope_is_learnable_and_gradchecks():
    x = away_from_kink(3, 2, 4).requires_grad_()
    w = torch.tensor([0.2, -0.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(scratch_prelu, (x, w))
    assert ScratchPReLU(2).weight.requires_grad
    with pytest.raises(ValueError, match="slopes"):
        scratch_prelu(torch.zeros(2, 3), torch.ones(2))


def reference_maxout(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Slow reference: one affine map per piece, then the elementwise max."""
    pieces = [x @ weight[:, p, :].T + bias[:, p] for p in range(weight.shape[1])]
    return torch.stack(pieces).max(dim=0).values


def test_maxout_matches_reference_and_gradchecks():
    layer = Maxout(5, 4, pieces=3).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference_maxout(x, layer.weight, layer.bias))
    assert layer(x).shape == (6, 4)
    args = (x.clone().requires_grad_(), layer.weight.detach().clone().requires_grad_(),
            layer.bias.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(maxout, args)


def test_maxout_with_a_zero_piece_is_relu():
    # max(w.x + b, 0) = ReLU(w.x + b): maxout generalises ReLU.
    weight = torch.zeros(3, 2, 4, dtype=torch.float64)
    bias = torch.zeros(3, 2, dtype=torch.float64)
    weight[:, 0] = torch.randn(3, 4, dtype=torch.float64)
    bias[:, 0] = torch.randn(3, dtype=torch.float64)
    x = torch.randn(7, 4, dtype=torch.float64)
    torch.testing.assert_close(maxout(x, weight, bias), torch.relu(x @ weight[:, 0].T + bias[:, 0]))
