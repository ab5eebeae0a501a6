"""Step, exponential and cosine decay against torch's StepLR, ExponentialLR and CosineAnnealingLR."""

from __future__ import annotations

import pytest
import torch
from torch.optim import lr_scheduler

from detkit.lectures.schedules import (
    cosine_decay,
    cosine_decay_scheduler,
    exponential_decay,
    exponential_decay_scheduler,
    step_decay,
    step_decay_scheduler,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (torch's thread pool spins badly on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


N = 40


def make_optimizer(lrs=(0.1,)) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs])


def sequence(make_scheduler, lrs=(0.1,)) -> list[list[float]]:
    """Each group's lr at steps 0..N-1 (an optimizer step, then a scheduler step)."""
    opt = make_optimizer(lrs)
    sched = make_scheduler(opt)
    out = []
    for _ in range(N):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


CASES = [
    pytest.param(
        lambda opt: lr_scheduler.StepLR(opt, step_size=7, gamma=0.5),
        lambda opt: step_decay_scheduler(opt, step_size=7, gamma=0.5),
        lambda step, lr: step_decay(step, lr, step_size=7, gamma=0.5),
        id="step",
    ),
    pytest.param(
        lambda opt: lr_scheduler.ExponentialLR(opt, gamma=0.9),
        lambda opt: exponential_decay_scheduler(opt, gamma=0.9),
        lambda step, lr: exponential_decay(step, lr, gamma=0.9),
        id="exponential",
    ),
    pytest.param(
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=15, eta_min=0.01),
        lambda opt: cosine_decay_scheduler(opt, total_steps=15, min_lr=0.01),
        lambda step, lr: cosine_decay(step, lr, total_steps=15, min_lr=0.01),
        id="cosine",
    ),
]


@pytest.mark.parametrize(("torch_factory", "our_factory", "fn"), CASES)
def test_schedules_match_torch(torch_factory, our_factory, fn):
    lrs = (0.1, 0.03)  # two param groups with different base lrs
    expected = sequence(torch_factory, lrs)
    ours = sequence(our_factory, lrs)
    for step, (row_expected, row_ours) in enumerate(zip(expected, ours)):
        assert row_ours == pytest.approx(row_expected, rel=1e-10, abs=1e-14)
        assert [fn(step, lr) for lr in lrs] == pytest.approx(row_expected, rel=1e-10, abs=1e-14)


def test_cosine_endpoints_and_errors():
    assert cosine_decay(0, 0.1, 10, 0.001) == pytest.approx(0.1)
    assert cosine_decay(5, 0.1, 10, 0.0) == pytest.approx(0.05)
    assert cosine_decay(10, 0.1, 10, 0.001) == pytest.approx(0.001)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_decay(0, 0.1, 0)
    with pytest.raises(ValueError, match="step_size"):
        step_decay(0, 0.1, 0)
