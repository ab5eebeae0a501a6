"""The threaded RoIAlign equals torchvision's, values and gradients."""

import pytest
import torch
import torchvision

from detkit.ops import roi_align


def make_inputs(num_rois: int, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, 8, 20, 24, generator=g, dtype=dtype)
    xy = torch.rand(num_rois, 2, generator=g, dtype=dtype) * 80
    wh = torch.rand(num_rois, 2, generator=g, dtype=dtype) * 40 + 1
    index = torch.randint(0, 3, (num_rois, 1), generator=g).to(dtype)
    return features, torch.cat([index, xy, xy + wh], dim=1)


@pytest.fixture(autouse=True)
def two_threads(monkeypatch):
    """The threaded path needs at least two torch threads, whatever the test runner set."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)


@pytest.mark.parametrize("aligned", [False, True])
def test_forward_and_backward_match_torchvision(aligned):
    features, rois = make_inputs(700)
    upstream = torch.randn(700, 8, 7, 7, generator=torch.Generator().manual_seed(1))
    results = []
    for fn in (roi_align, None):
        x = features.clone().requires_grad_(True)
        if fn is None:
            out = torchvision.ops.roi_align(x, rois, (7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=aligned)
        else:
            out = fn(x, rois, (7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=aligned)
        (out * upstream).sum().backward()
        results.append((out.detach(), x.grad))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-4)


def test_gradcheck_in_double_with_threads(monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["detkit.ops.roi_align"], "MIN_ROIS_PER_THREAD", 2)
    features, rois = make_inputs(6, torch.float64)
    features = features[:, :2, :8, :8].contiguous().requires_grad_(True)
    rois[:, 1:] /= 4

    def fn(x):
        return roi_align(x, rois, (3, 3), spatial_scale=0.5, sampling_ratio=2)

    assert torch.autograd.gradcheck(fn, (features,), eps=1e-6, atol=1e-5)


def test_no_rois():
    features, _ = make_inputs(1)
    assert roi_align(features, torch.zeros((0, 5)), (7, 7), spatial_scale=1.0, sampling_ratio=2).shape == (0, 8, 7, 7)
