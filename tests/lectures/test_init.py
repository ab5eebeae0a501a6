"""Xavier and He Gaussian init: fans against torch, empirical std, same draws as torch.nn.init."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

from detkit.lectures.init import compute_fans, he_normal_, init_weights_, xavier_normal_


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (torch's thread pool spins badly on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LAYERS = [
    nn.Linear(7, 5),
    nn.Conv1d(3, 4, 5),
    nn.Conv2d(3, 8, (3, 5)),
    nn.Conv2d(4, 8, 3, groups=2),
    nn.Conv3d(2, 6, (1, 2, 3)),
]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda m: type(m).__name__)
def test_fans_match_torch(layer):
    assert compute_fans(layer.weight) == torch.nn.init._calculate_fan_in_and_fan_out(layer.weight)
    assert compute_fans(layer.weight.shape) == compute_fans(layer.weight)


def test_fans_need_two_dims():
    with pytest.raises(ValueError, match="at least 2 dims"):
        compute_fans(torch.zeros(5))


def test_xavier_is_gaussian_with_glorot_std():
    w = torch.empty(500, 300, dtype=torch.float64)
    xavier_normal_(w, generator=torch.Generator().manual_seed(0))
    expected = math.sqrt(2.0 / (500 + 300))
    assert w.std().item() == pytest.approx(expected, rel=0.02)
    assert abs(w.mean().item()) < 5 * expected / math.sqrt(w.numel())
    # Gaussian, not uniform: kurtosis 3 (a uniform distribution has 1.8).
    assert stats.kurtosis(w.flatten().numpy(), fisher=False) == pytest.approx(3.0, abs=0.1)


def test_he_is_gaussian_with_fan_in_std_for_conv():
    w = torch.empty(64, 32, 3, 3, dtype=torch.float64)
    he_normal_(w, generator=torch.Generator().manual_seed(0))
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / (32 * 9)), rel=0.03)
    assert stats.kurtosis(w.flatten().numpy(), fisher=False) == pytest.approx(3.0, abs=0.15)


def test_same_draws_as_torch_init():
    for shape in [(40, 30), (8, 4, 3, 3)]:
        ours, theirs = torch.empty(shape), torch.empty(shape)
        xavier_normal_(ours, gain=1.5, generator=torch.Generator().manual_seed(3))
        nn.init.xavier_normal_(theirs, gain=1.5, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(ours, theirs)
        for a, mode in [(0.0, "fan_in"), (0.2, "fan_in"), (0.0, "fan_out")]:
            he_normal_(ours, negative_slope=a, mode=mode, generator=torch.Generator().manual_seed(4))
            nn.init.kaiming_normal_(theirs, a=a, mode=mode, nonlinearity="leaky_relu",
                                    generator=torch.Generator().manual_seed(4))
            torch.testing.assert_close(ours, theirs)


def relu_net_output_rms(scheme: str, depth: int = 6, width: int = 512) -> float:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width, bias=False), nn.ReLU()]
    net = init_weights_(nn.Sequential(*layers).double(), scheme, generator=torch.Generator().manual_seed(1))
    x = torch.randn(256, width, dtype=torch.float64)
    with torch.no_grad():
        return (net(x).pow(2).mean() / x.pow(2).mean()).sqrt().item()


def test_he_keeps_relu_activations_alive_where_xavier_halves_their_energy_per_layer():
    # ReLU zeroes half of the units: each layer multiplies the second moment by n s^2 / 2,
    # i.e. 1 for He (s^2 = 2/n) and 1/2 for Xavier (s^2 = 1/n with fan_in = fan_out = n).
    # (Finite width adds a random factor of about ±sqrt(2 / width) per layer.)
    assert relu_net_output_rms("he") == pytest.approx(1.0, rel=0.2)
    assert relu_net_output_rms("xavier") == pytest.approx(math.sqrt(2.0**-6), rel=0.2)


def test_init_weights_zeroes_biases_and_rejects_unknown_schemes():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    init_weights_(model, "xavier")
    assert all(torch.all(m.bias == 0) for m in model if hasattr(m, "bias") and m.bias is not None)
    with pytest.raises(ValueError, match="unknown init scheme"):
        init_weights_(model, "uniform")  # type: ignore[arg-type]
