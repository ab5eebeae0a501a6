"""Lecture-7 optimizers: trajectories against torch.optim and against the course notes' update rules."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from detkit.errors import ConfigError
from detkit.lectures.optim import (
    OPTIMIZERS,
    AdaGrad,
    Nesterov,
    RMSProp,
    ScratchAdam,
    ScratchSGD,
    SGDMomentum,
    build_optimizer,
    lbfgs_minimize,
)
from detkit.lectures.regularization import l2_penalty


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (torch's thread pool spins badly on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


STEPS = 100


def rosenbrock(p: torch.Tensor) -> torch.Tensor:
    # Scaled by 1/100 so that one set of learning rates suits it and the MLP (curvature ~13 at the start).
    return ((1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2) / 100


def make_mlp() -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(16, 4, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    return model, lambda m: nn.functional.cross_entropy(m(x), y)


def mlp_trajectory(opt_factory) -> list[torch.Tensor]:
    model, loss_fn = make_mlp()
    opt = opt_factory(model.parameters())
    path = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()
        path.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return path


def rosenbrock_trajectory(opt_factory) -> list[torch.Tensor]:
    p = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    opt = opt_factory([p])
    path = []
    for _ in range(STEPS):
        opt.zero_grad()
        rosenbrock(p).backward()
        opt.step()
        path.append(p.detach().clone())
    return path


CASES = [
    ("sgd", {"lr": 0.1}, torch.optim.SGD, {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "weight_decay": 0.01}, torch.optim.SGD, {"lr": 0.1, "weight_decay": 0.01}),
    ("momentum", {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}, torch.optim.SGD,
     {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}),
    ("nesterov", {"lr": 0.05, "momentum": 0.8, "weight_decay": 1e-3}, torch.optim.SGD,
     {"lr": 0.05, "momentum": 0.8, "weight_decay": 1e-3, "nesterov": True}),
    ("adagrad", {"lr": 0.1}, torch.optim.Adagrad, {"lr": 0.1}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 1e-3, "initial_accumulator_value": 0.1},
     torch.optim.Adagrad, {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 1e-3, "initial_accumulator_value": 0.1}),
    ("rmsprop", {"lr": 1e-2, "alpha": 0.9}, torch.optim.RMSprop, {"lr": 1e-2, "alpha": 0.9}),
    ("rmsprop", {"lr": 1e-3, "momentum": 0.5, "centered": True, "weight_decay": 1e-3}, torch.optim.RMSprop,
     {"lr": 1e-3, "momentum": 0.5, "centered": True, "weight_decay": 1e-3}),
    ("adam", {"lr": 1e-2}, torch.optim.Adam, {"lr": 1e-2}),
    ("adam", {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 1e-2}, torch.optim.Adam,
     {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 1e-2}),
    ("adam", {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True}, torch.optim.AdamW,
     {"lr": 1e-2, "weight_decay": 0.1}),
]


@pytest.mark.parametrize("trajectory", [mlp_trajectory, rosenbrock_trajectory], ids=["mlp", "rosenbrock"])
@pytest.mark.parametrize(("name", "ours_kw", "torch_cls", "torch_kw"), CASES)
def test_trajectory_matches_torch(trajectory, name, ours_kw, torch_cls, torch_kw):
    ours = trajectory(lambda params: build_optimizer(name, params, **ours_kw))
    theirs = trajectory(lambda params: torch_cls(params, foreach=False, **torch_kw))
    assert all(torch.isfinite(p).all() for p in ours)
    assert (ours[-1] - ours[0]).abs().max().item() > 1e-3  # the test would be vacuous if nothing moved
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# The course notes' update rules, written as in the notes (numpy style, plain tensors).


def notes_momentum(lr: float, mu: float, nesterov: bool) -> list[torch.Tensor]:
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64)
    v = torch.zeros(2, dtype=torch.float64)
    path = []
    for _ in range(STEPS):
        xg = x.clone().requires_grad_()
        rosenbrock(xg).backward()
        dx = xg.grad
        if nesterov:
            v_prev = v
            v = mu * v - lr * dx
            x = x - mu * v_prev + (1 + mu) * v
        else:
            v = mu * v - lr * dx
            x = x + v
        path.append(x)
    return path


def notes_rmsprop(lr: float, decay_rate: float, eps: float) -> list[torch.Tensor]:
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64)
    cache = torch.zeros(2, dtype=torch.float64)
    path = []
    for _ in range(STEPS):
        xg = x.clone().requires_grad_()
        rosenbrock(xg).backward()
        dx = xg.grad
        cache = decay_rate * cache + (1 - decay_rate) * dx**2
        x = x - lr * dx / (cache.sqrt() + eps)
        path.append(x)
    return path


def notes_adam(lr: float, beta1: float, beta2: float, eps: float) -> list[torch.Tensor]:
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64)
    m = torch.zeros(2, dtype=torch.float64)
    v = torch.zeros(2, dtype=torch.float64)
    path = []
    for t in range(1, STEPS + 1):
        xg = x.clone().requires_grad_()
        rosenbrock(xg).backward()
        dx = xg.grad
        m = beta1 * m + (1 - beta1) * dx
        v = beta2 * v + (1 - beta2) * dx**2
        mt = m / (1 - beta1**t)
        vt = v / (1 - beta2**t)
        x = x - lr * mt / (vt.sqrt() + eps)
        path.append(x)
    return path


@pytest.mark.parametrize(
    ("ours", "reference"),
    [
        (lambda p: SGDMomentum(p, lr=0.05, momentum=0.9), lambda: notes_momentum(0.05, 0.9, nesterov=False)),
        (lambda p: Nesterov(p, lr=0.05, momentum=0.9), lambda: notes_momentum(0.05, 0.9, nesterov=True)),
        (lambda p: RMSProp(p, lr=1e-2, alpha=0.99, eps=1e-8), lambda: notes_rmsprop(1e-2, 0.99, 1e-8)),
        (lambda p: ScratchAdam(p, lr=1e-2, betas=(0.9, 0.999), eps=1e-8), lambda: notes_adam(1e-2, 0.9, 0.999, 1e-8)),
    ],
    ids=["momentum", "nesterov", "rmsprop", "adam"],
)
def test_trajectory_matches_course_notes_form_with_constant_lr(ours, reference):
    for a, b in zip(rosenbrock_trajectory(ours), reference()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_adam_first_step_is_lr_times_gradient_sign():
    # Bias correction: m_hat = g and v_hat = g^2 after one step, so the step is lr * g / |g|.
    p = torch.tensor([3.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    opt = ScratchAdam([p], lr=0.1, eps=0.0)
    (p * torch.tensor([5.0, -0.01, 2.0], dtype=torch.float64)).sum().backward()
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([2.9, -1.9, 0.4], dtype=torch.float64))


def test_weight_decay_equals_l2_penalty_in_the_loss():
    plain = mlp_trajectory(lambda params: ScratchSGD(params, lr=0.1, weight_decay=0.05))
    model, loss_fn = make_mlp()
    opt = ScratchSGD(model.parameters(), lr=0.1)
    for target in plain:
        opt.zero_grad()
        (loss_fn(model) + l2_penalty(model.parameters(), 0.05)).backward()
        opt.step()
        torch.testing.assert_close(torch.cat([p.detach().flatten() for p in model.parameters()]), target)


def test_state_dict_round_trip_continues_the_trajectory():
    straight = rosenbrock_trajectory(lambda params: ScratchAdam(params, lr=1e-2))
    p = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    opt = ScratchAdam([p], lr=1e-2)
    for step in range(STEPS):
        if step == STEPS // 2:
            state = opt.state_dict()
            opt = ScratchAdam([p], lr=1.0)
            opt.load_state_dict(state)
        opt.zero_grad()
        rosenbrock(p).backward()
        opt.step()
    torch.testing.assert_close(p.detach(), straight[-1])


def test_closure_loss_is_returned_and_params_without_grad_are_skipped():
    a = torch.ones(2, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    opt = SGDMomentum([a, b], lr=0.1)

    def closure() -> float:
        opt.zero_grad()
        loss = (a**2).sum()
        loss.backward()
        return float(loss.detach())

    assert opt.step(closure) == 2.0
    torch.testing.assert_close(a.detach(), torch.full((2,), 0.8))
    torch.testing.assert_close(b.detach(), torch.ones(2))


def test_registry_and_errors():
    assert set(OPTIMIZERS) == {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"}
    p = [torch.zeros(1, requires_grad=True)]
    for name, cls in OPTIMIZERS.items():
        assert isinstance(build_optimizer(name, p, lr=0.1), cls)
        assert isinstance(build_optimizer(name, p, lr=0.1), torch.optim.Optimizer)
    assert isinstance(build_optimizer("Adam", p), ScratchAdam)
    with pytest.raises(ConfigError, match="adagrad, adam, momentum, nesterov, rmsprop, sgd"):
        build_optimizer("adamax", p)
    with pytest.raises(ValueError, match="lr"):
        ScratchSGD(p, lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        ScratchAdam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Nesterov"):
        ScratchSGD(p, lr=0.1, nesterov=True)
    assert isinstance(AdaGrad(p), torch.optim.Optimizer)


def test_lbfgs_minimizes_a_quadratic():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, dtype=torch.float64, generator=gen)
    a = m @ m.T + 6 * torch.eye(6, dtype=torch.float64)  # symmetric positive definite
    b = torch.randn(6, dtype=torch.float64, generator=gen)
    x0 = torch.zeros(6, dtype=torch.float64)
    result = lbfgs_minimize(lambda x: 0.5 * x @ a @ x - b @ x, x0, steps=50, tolerance_change=0.0)
    x_star = torch.linalg.solve(a, b)
    torch.testing.assert_close(result.x, x_star, rtol=0, atol=1e-9)
    assert result.value == pytest.approx(float(-0.5 * b @ x_star), abs=1e-12)
    assert torch.all(x0 == 0)  # the start point is not modified
    assert len(result.losses) >= 2 and result.losses[-1] <= result.losses[0]
    assert math.isfinite(result.value)
