"""Optimizer param groups and lr schedules, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detkit.engine import build_optimizer, build_scheduler
from detkit.engine.optim import resolve_milestones
from detkit.errors import ConfigError


def lr_sequence(n: int, *, lr: float = 0.1, **kwargs) -> list[float]:
    """The lr of iterations 0..n-1, stepping the optimizer and then the scheduler."""
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    sched = build_scheduler(opt, **kwargs)
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_step_schedule_with_warmup_matches_hand_values():
    # lr 0.1, warmup 4 iterations from 0.2 * lr, decays x0.1 at 0.5 * 10 = 5 and 0.8 * 10 = 8.
    lrs = lr_sequence(
        10,
        schedule="step",
        total_iters=10,
        warmup_iters=4,
        warmup_factor=0.2,
        steps=[0.5, 0.8],
        gamma=0.1,
    )
    assert lrs == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001])


def test_absolute_steps_equal_their_fractions():
    kwargs = {"schedule": "step", "total_iters": 10, "warmup_iters": 4, "warmup_factor": 0.2}
    assert lr_sequence(10, steps=[5, 8], **kwargs) == pytest.approx(
        lr_sequence(10, steps=[0.5, 0.8], **kwargs)
    )
    assert resolve_milestones([0.8, 0.5, 30], total_iters=10) == [5, 8, 30]


def test_cosine_schedule_matches_formula():
    lrs = lr_sequence(9, schedule="cosine", total_iters=8, warmup_iters=0, warmup_factor=1.0)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[4] == pytest.approx(0.05)
    assert lrs[8] == pytest.approx(0.0)
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * t / 8)) for t in range(9)])


def test_cosine_with_warmup_is_the_product_of_both():
    lrs = lr_sequence(8, schedule="cosine", total_iters=8, warmup_iters=2, warmup_factor=0.5)
    warm = [0.5, 0.75] + [1.0] * 6
    assert lrs == pytest.approx(
        [0.1 * w * 0.5 * (1 + math.cos(math.pi * t / 8)) for t, w in enumerate(warm)]
    )


def test_constant_schedule_is_flat_after_warmup():
    lrs = lr_sequence(6, schedule="constant", total_iters=6, warmup_iters=2, warmup_factor=0.5)
    assert lrs == pytest.approx([0.05, 0.075, 0.1, 0.1, 0.1, 0.1])


def test_unknown_schedule_names_the_key_and_suggests():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match=r"train\.schedule.*did you mean 'cosine'"):
        build_scheduler(opt, schedule="cosin", total_iters=10, warmup_iters=0, warmup_factor=1.0)
    with pytest.raises(ConfigError, match=r"train\.steps"):
        build_scheduler(
            opt, schedule="step", total_iters=10, warmup_iters=0, warmup_factor=1.0, steps=[-1]
        )


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 2)
        self.ln = nn.LayerNorm(2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.tied = nn.Linear(4, 2, bias=False)
        self.tied.weight = self.fc.weight  # shared: must appear once


def test_param_groups_exclude_norms_and_biases_from_decay():
    net = _Net()
    opt = build_optimizer(net, name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert isinstance(opt, torch.optim.SGD)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net.conv.weight), id(net.fc.weight)}
    expected_no_decay = [
        net.conv.bias,
        net.bn.weight,
        net.bn.bias,
        net.gn.weight,
        net.gn.bias,
        net.fc.bias,
        net.ln.weight,
        net.ln.bias,
    ]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in expected_no_decay}
    assert len(decay["params"]) + len(no_decay["params"]) == 10  # each once, frozen left out
    assert decay["momentum"] == 0.9


def test_decay_shrinks_weights_but_not_biases():
    # With zero gradients, one SGD step changes a parameter only through weight decay.
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    opt = build_optimizer(net, name="sgd", lr=0.5, momentum=0.0, weight_decay=0.1)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(net[0].weight, torch.full((2, 2), 1 - 0.5 * 0.1))
    for p in (net[0].bias, net[1].weight, net[1].bias):
        assert torch.equal(p, torch.ones_like(p))


def test_adamw_uses_momentum_as_beta1():
    opt = build_optimizer(_Net(), name="adamw", lr=1e-3, momentum=0.8, weight_decay=0.05)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.8, 0.999)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_unknown_optimizer_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.optimizer.*known: sgd, adamw"):
        build_optimizer(_Net(), name="adam", lr=0.1, momentum=0.9, weight_decay=0.0)
    with pytest.raises(ConfigError, match=r"train\.lr"):
        build_optimizer(_Net(), name="sgd", lr=0.0, momentum=0.9, weight_decay=0.0)
