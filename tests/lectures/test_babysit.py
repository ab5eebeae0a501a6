"""Babysitting checks (initial loss, overfitting a subset, lr range test) and random search in log space."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from detkit.lectures.babysit import initial_loss_check, lr_range_test, overfit_small_subset
from detkit.lectures.search import random_search, sample_params


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (torch's thread pool spins badly on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp(d_in: int = 10, hidden: int = 32, classes: int = 5) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, classes)).double()


def data(n: int = 20, d_in: int = 10, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, dtype=torch.float64, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def test_initial_loss_is_log_c_when_all_scores_are_equal():
    torch.manual_seed(0)
    model = mlp(classes=10)
    nn.init.zeros_(model[2].weight)  # equal scores for every class: softmax is uniform, loss = log(10) exactly
    nn.init.zeros_(model[2].bias)
    report = initial_loss_check(model, data(classes=10), num_classes=10)
    assert report.loss == pytest.approx(math.log(10), abs=1e-12)
    assert report.expected == pytest.approx(math.log(10)) and report.ok


def test_initial_loss_check_flags_a_too_large_init_and_averages_over_batches():
    torch.manual_seed(0)
    model = mlp(classes=10)
    with torch.no_grad():
        model[2].weight.mul_(0.01)
    x, y = data(n=30, classes=10)
    whole = initial_loss_check(model, (x, y), num_classes=10)
    assert whole.ok and abs(whole.loss - math.log(10)) < 0.05  # small random weights: close to log C
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]
    assert initial_loss_check(model, batches, num_classes=10).loss == pytest.approx(whole.loss, rel=1e-12)
    model.train()
    with torch.no_grad():
        model[2].weight.mul_(1e4)
    bad = initial_loss_check(model, (x, y), num_classes=10)
    assert not bad.ok and bad.loss > 2 * math.log(10)
    assert model.training  # mode restored


def test_overfit_small_subset_reaches_full_training_accuracy():
    torch.manual_seed(0)
    model = mlp()
    x, y = data(n=20)  # random labels: only memorisation can fit them
    losses = overfit_small_subset(model, (x, y), steps=300, lr=1e-2)
    assert len(losses) == 300
    assert losses[-1] < 0.05 < losses[0]
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).double().mean().item()
    assert accuracy == 1.0


def test_lr_range_test_suggests_a_stable_lr_and_restores_weights():
    # Least squares: gradient descent on mean((Xw - y)^2) diverges once lr > 2 / lambda_max(2 X^T X / n).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, dtype=torch.float64, generator=gen) * torch.linspace(0.5, 2.0, 8, dtype=torch.float64)
    y = x @ torch.randn(8, dtype=torch.float64, generator=gen)
    lr_diverge = 2.0 / torch.linalg.eigvalsh(2 * x.T @ x / 64).max().item()
    model = nn.Linear(8, 1, bias=False).double()
    initial = model.weight.detach().clone()
    result = lr_range_test(model, lambda out, t: F.mse_loss(out[:, 0], t), [(x, y)], 1e-4, 10.0, steps=80)
    lrs, losses, suggested = result
    expected_lrs = torch.logspace(-4, 1, 80, dtype=torch.float64)  # geometric spacing
    torch.testing.assert_close(torch.tensor(lrs, dtype=torch.float64), expected_lrs[: len(lrs)])
    assert len(lrs) < 80  # stopped when the loss exploded
    assert max(losses) > 4 * min(losses)
    assert lr_diverge / 100 < suggested < lr_diverge
    assert torch.equal(model.weight.detach(), initial)
    with pytest.raises(ValueError, match="lr_min"):
        lr_range_test(model, F.mse_loss, [(x, y)], 1.0, 0.1, steps=10)


def test_log_space_samples_are_log_uniform():
    rng = random.Random(0)
    samples = [sample_params({"lr": (1e-5, 1e-1, "log")}, rng)["lr"] for _ in range(4000)]
    logs = torch.tensor([math.log10(s) for s in samples], dtype=torch.float64)
    assert logs.min() >= -5 and logs.max() <= -1
    assert logs.mean().item() == pytest.approx(-3.0, abs=0.05)  # uniform on [-5, -1]: mean -3, variance 16/12
    assert logs.var().item() == pytest.approx(16 / 12, rel=0.05)
    assert stats.kstest(logs.numpy(), "uniform", args=(-5, 4)).pvalue > 0.01
    per_decade = torch.histc(logs, bins=4, min=-5, max=-1) / len(samples)
    torch.testing.assert_close(per_decade, torch.full((4,), 0.25, dtype=torch.float64), rtol=0, atol=0.03)


def test_linear_and_int_kinds():
    rng = random.Random(1)
    points = [sample_params({"p": (0.2, 0.6, "linear"), "k": (2, 5, "int")}, rng) for _ in range(2000)]
    ps = [pt["p"] for pt in points]
    assert min(ps) >= 0.2 and max(ps) <= 0.6 and sum(ps) / len(ps) == pytest.approx(0.4, abs=0.01)
    assert {pt["k"] for pt in points} == {2, 3, 4, 5} and all(isinstance(pt["k"], int) for pt in points)


def test_random_search_finds_the_minimum_of_a_known_quadratic():
    def objective(params: dict[str, float]) -> float:
        return (math.log10(params["lr"]) + 3.0) ** 2 + 4 * (params["dropout"] - 0.3) ** 2

    space = {"lr": (1e-6, 1.0, "log"), "dropout": (0.0, 0.9, "linear")}
    results = random_search(space, objective, n_trials=300, seed=0)
    assert len(results) == 300
    scores = [t.score for t in results]
    assert scores == sorted(scores)
    assert all(t.score == objective(t.params) for t in results)
    best = results[0].params
    assert abs(math.log10(best["lr"]) + 3.0) < 0.3 and abs(best["dropout"] - 0.3) < 0.15
    assert random_search(space, objective, 5, seed=0) == random_search(space, objective, 5, seed=0)  # reproducible
    assert random_search(space, objective, 5, seed=0) != random_search(space, objective, 5, seed=1)
    best_max = random_search(space, objective, 20, seed=0, minimize=False)
    assert best_max[0].score == max(t.score for t in best_max)


def test_random_search_sorts_diverged_trials_last_and_validates_the_space():
    results = random_search({"x": (0.0, 1.0, "linear")}, lambda p: math.nan if p["x"] > 0.5 else p["x"], 20)
    finite = [t for t in results if math.isfinite(t.score)]
    assert results[: len(finite)] == finite and results[0].score == min(t.score for t in finite)
    with pytest.raises(ValueError, match="low > 0"):
        random_search({"lr": (0.0, 1.0, "log")}, lambda p: 0.0, 3)
    with pytest.raises(ValueError, match="kind"):
        random_search({"lr": (0.1, 1.0, "exp")}, lambda p: 0.0, 3)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="low 2"):
        random_search({"k": (2, 1, "int")}, lambda p: 0.0, 3)
