"""Inverted dropout, DropConnect, L2 penalty, model and snapshot ensembles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detkit.lectures.ensembles import (
    Ensemble,
    cyclic_cosine_lr,
    ensemble_predict,
    snapshot_models,
    train_snapshot_ensemble,
)
from detkit.lectures.regularization import DropConnectLinear, ScratchDropout, l2_penalty, scratch_dropout


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (torch's thread pool spins badly on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_mask_rate_scaling_and_expectation(p):
    n = 200_000
    x = torch.full((n,), 3.0, dtype=torch.float64, requires_grad=True)
    y = scratch_dropout(x, p, generator=torch.Generator().manual_seed(0))
    dropped = (y == 0).double().mean().item()
    tol = 5 * (p * (1 - p) / n) ** 0.5  # 5 standard errors of a Bernoulli rate
    assert dropped == pytest.approx(p, abs=tol)
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 3.0 / (1 - p)))  # survivors scaled by 1 / (1 - p)
    assert y.mean().item() == pytest.approx(3.0, abs=5 * 3.0 * (p / ((1 - p) * n)) ** 0.5)  # E[y] = x
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach() / 3.0)  # the local gradient is the scaled mask


def test_dropout_is_identity_at_test_time_and_edge_probabilities():
    x = torch.randn(4, 5)
    layer = ScratchDropout(0.5)
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    assert not torch.equal(layer(x), x)
    assert torch.equal(scratch_dropout(x, 0.0), x)
    assert torch.equal(scratch_dropout(x, 1.0), torch.zeros_like(x))
    assert torch.equal(scratch_dropout(x, 0.5, training=False), x)
    with pytest.raises(ValueError, match="drop probability"):
        ScratchDropout(1.5)


def test_dropconnect_drops_weights_with_inverted_scaling():
    torch.manual_seed(0)
    reference = nn.Linear(6, 4).double()
    layer = DropConnectLinear(6, 4, p=0.4, generator=torch.Generator().manual_seed(1)).double()
    layer.load_state_dict(reference.state_dict())  # an nn.Linear state dict loads as is
    x = torch.randn(3, 6, dtype=torch.float64)

    # Same generator stream -> the same weight mask: the output is a plain linear map with W * M / (1 - p).
    mask = (torch.rand(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) >= 0.4).double()
    torch.testing.assert_close(layer(x), F.linear(x, reference.weight * mask / 0.6, reference.bias))

    # Dropped weights get exactly zero gradient, at the rate p.
    layer.weight.grad = None
    layer(x).sum().backward()
    zero_rate = (layer.weight.grad == 0).double().mean().item()
    assert 0.1 < zero_rate < 0.7

    # The expectation over masks is the test-time (full-weight) layer.
    with torch.no_grad():
        mean_out = torch.stack([layer(x) for _ in range(4000)]).mean(dim=0)
        layer.eval()
        torch.testing.assert_close(layer(x), reference(x))
    torch.testing.assert_close(mean_out, reference(x), rtol=0, atol=0.03)


def test_dropconnect_mask_rate():
    layer = DropConnectLinear(300, 200, p=0.3, bias=False, generator=torch.Generator().manual_seed(2))
    layer(torch.ones(1, 300)).sum().backward()
    rate = (layer.weight.grad == 0).float().mean().item()  # d y / d W_ij = x_j M_ij / (1 - p), x = 1
    assert rate == pytest.approx(0.3, abs=0.01)


def test_l2_penalty():
    w = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    assert l2_penalty(w, 0.1).item() == pytest.approx(0.5 * 0.1 * 14.0)
    assert l2_penalty([], 0.1).item() == 0.0


def small_models(k: int = 3) -> list[nn.Module]:
    torch.manual_seed(0)
    return [nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5)).double() for _ in range(k)]


def test_ensemble_averages_softmax_probabilities():
    models = small_models()
    x = torch.randn(7, 4, dtype=torch.float64)
    expected = sum(torch.softmax(m(x), dim=1) for m in models) / 3
    torch.testing.assert_close(ensemble_predict(models, x), expected)
    torch.testing.assert_close(Ensemble(models)(x), expected)
    torch.testing.assert_close(Ensemble(models)(x).sum(dim=1), torch.ones(7, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least one model"):
        Ensemble([])


def test_cyclic_cosine_matches_torch_warm_restarts():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=5, eta_min=0.01)
    for step in range(17):
        assert cyclic_cosine_lr(step, 0.2, 5, 0.01) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


def test_snapshot_ensemble_takes_snapshots_at_cycle_ends():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 2, (12,), generator=gen)
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    torch.manual_seed(1)
    model = nn.Linear(3, 2).double()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_snapshot_ensemble(
        model, F.cross_entropy, batches, num_cycles=3, cycle_length=4, base_lr=0.5, min_lr=0.01,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9),
    )
    assert result.snapshot_steps == [3, 7, 11]
    assert len(result.snapshots) == 3 and len(result.lrs) == len(result.losses) == 12

    # Oracle: the same run with torch's SGD and CosineAnnealingWarmRestarts, weights recorded after steps 3, 7, 11.
    replay = nn.Linear(3, 2).double()
    replay.load_state_dict(init)
    opt = torch.optim.SGD(replay.parameters(), lr=0.5, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=4, eta_min=0.01)
    expected = []
    for step in range(12):
        assert result.lrs[step] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        xb, yb = batches[step % 2]
        opt.zero_grad()
        F.cross_entropy(replay(xb), yb).backward()
        opt.step()
        sched.step()
        if step in (3, 7, 11):
            expected.append({k: v.clone() for k, v in replay.state_dict().items()})
    for got, want in zip(result.snapshots, expected):
        for key in want:
            torch.testing.assert_close(got[key], want[key])
    assert not torch.equal(result.snapshots[0]["weight"], result.snapshots[1]["weight"])

    members = snapshot_models(model, result.snapshots)
    for member, state in zip(members, result.snapshots):
        torch.testing.assert_close(member(x), F.linear(x, state["weight"], state["bias"]))
    assert Ensemble(members)(x).shape == (12, 2)
