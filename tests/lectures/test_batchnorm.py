"""Batch norm against torch.nn.BatchNorm1d/2d: outputs, running statistics, gradients; gradcheck; a hand fixture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detkit.lectures.batchnorm import ScratchBatchNorm1d, ScratchBatchNorm2d, scratch_batch_norm


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (torch's thread pool spins badly on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pair(ours_cls, theirs_cls, c: int, **kwargs):
    torch.manual_seed(0)
    theirs = theirs_cls(c, **kwargs).double()
    if theirs.weight is not None:
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5)
            theirs.bias.uniform_(-0.5, 0.5)
    ours = ours_cls(c, **kwargs).double()
    ours.load_state_dict(theirs.state_dict())  # same names: weight, bias, running_mean/var, num_batches_tracked
    return ours, theirs


def compare_steps(ours, theirs, shape, *, train_steps: int = 3):
    gen = torch.Generator().manual_seed(1)
    for step in range(train_steps):
        x = 2.0 * torch.randn(shape, dtype=torch.float64, generator=gen) + step
        upstream = torch.randn(shape, dtype=torch.float64, generator=gen)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = ours(x1), theirs(x2)
        torch.testing.assert_close(y1, y2)
        (y1 * upstream).sum().backward()
        (y2 * upstream).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)
        if theirs.weight is not None:
            torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)
            torch.testing.assert_close(ours.bias.grad, theirs.bias.grad)
        for name, buf in theirs.named_buffers():
            torch.testing.assert_close(dict(ours.named_buffers())[name], buf)
    ours.eval()
    theirs.eval()
    x = torch.randn(shape, dtype=torch.float64, generator=gen).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    torch.testing.assert_close(ours(x), theirs(x2))
    ours(x).sum().backward()
    theirs(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("shape", [(8, 5), (4, 5, 3)])
@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_batchnorm1d_matches_torch(shape, momentum):
    compare_steps(*pair(ScratchBatchNorm1d, nn.BatchNorm1d, 5, momentum=momentum), shape)


@pytest.mark.parametrize("kwargs", [{}, {"affine": False}, {"track_running_stats": False}, {"eps": 1e-3}])
def test_batchnorm2d_matches_torch(kwargs):
    compare_steps(*pair(ScratchBatchNorm2d, nn.BatchNorm2d, 3, **kwargs), (4, 3, 5, 6))


def test_training_function_gradchecks():
    x = torch.randn(6, 3, 2, dtype=torch.float64, requires_grad=True)
    gamma = torch.rand(3, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(3, dtype=torch.float64, requires_grad=True)
    def train_bn(x, g, b):
        return scratch_batch_norm(x, None, None, g, b, training=True)

    assert torch.autograd.gradcheck(train_bn, (x, gamma, beta))


def test_hand_computed_fixture():
    # One channel, values 1 and 3: mean 2, biased var 1 -> xhat = (-1, 1); unbiased var 2.
    x = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    running_mean = torch.zeros(1, dtype=torch.float64)
    running_var = torch.ones(1, dtype=torch.float64)
    gamma = torch.tensor([2.0], dtype=torch.float64)
    beta = torch.tensor([0.5], dtype=torch.float64)
    y = scratch_batch_norm(x, running_mean, running_var, gamma, beta, training=True, momentum=0.1, eps=0.0)
    torch.testing.assert_close(y, torch.tensor([[-1.5], [2.5]], dtype=torch.float64))
    torch.testing.assert_close(running_mean, torch.tensor([0.2], dtype=torch.float64))  # 0.9 * 0 + 0.1 * 2
    torch.testing.assert_close(running_var, torch.tensor([1.1], dtype=torch.float64))  # 0.9 * 1 + 0.1 * 2


def test_errors():
    bn = ScratchBatchNorm1d(3)
    with pytest.raises(ValueError, match="more than 1 value"):
        bn(torch.randn(1, 3))
    with pytest.raises(ValueError, match="3 channels"):
        bn(torch.randn(4, 2))
    with pytest.raises(ValueError, match="expects"):
        ScratchBatchNorm2d(3)(torch.randn(4, 3))
