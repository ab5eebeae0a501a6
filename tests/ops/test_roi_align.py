"""The threaded RoIAlign equals torchvision's, values and gradients."""

import contextlib
import sys

import pytest
import torch
import torchvision

from detkit.ops import roi_align
from detkit.ops.roi_align import MIN_ROIS_PER_THREAD

#: The threaded path starts at this many regions.
THREADED_FROM = 2 * MIN_ROIS_PER_THREAD


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


def per_image_boxes(rois: torch.Tensor, num_images: int = 3) -> list[torch.Tensor]:
    """``(R, 5)`` rois -> one ``(R_n, 4)`` box tensor per image, in image order."""
    return [rois[rois[:, 0] == n, 1:] for n in range(num_images)]


@pytest.fixture
def threaded_calls(monkeypatch):
    """Counts the calls that take the threaded path (so a test knows which path it checked)."""
    module = sys.modules["detkit.ops.roi_align"]
    calls: list[int] = []
    original = module._ParallelRoIAlign.apply

    def spy(*args):
        calls.append(args[1].shape[0])
        return original(*args)

    monkeypatch.setattr(module._ParallelRoIAlign, "apply", spy)
    return calls


def forward_and_grad(fn, features, boxes, output_size, **kwargs):
    x = features.clone().requires_grad_(True)
    out = fn(x, boxes, output_size, **kwargs)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * upstream).sum().backward()
    return out.detach(), x.grad


# Forward outputs are compared exactly: every region is pooled by the same torchvision
# kernel on its own, so splitting the regions into chunks changes no arithmetic. The
# feature gradient sums over regions, and the threaded path adds the per-chunk sums in
# another order: equal up to float32 rounding of sums of a few hundred terms.
@pytest.mark.parametrize("num_rois", [20, 300])  # below and above 2 * MIN_ROIS_PER_THREAD = 32
@pytest.mark.parametrize("output_size", [7, (7, 7), (5, 3), [4, 6]])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_both_paths_match_torchvision_for_every_argument_form(
    num_rois, output_size, aligned, sampling_ratio, threaded_calls
):
    features, rois = make_inputs(num_rois)
    kwargs = {"spatial_scale": 0.25, "sampling_ratio": sampling_ratio, "aligned": aligned}
    out, grad = forward_and_grad(roi_align, features, rois, output_size, **kwargs)
    ref_out, ref_grad = forward_and_grad(torchvision.ops.roi_align, features, rois, output_size, **kwargs)
    assert threaded_calls == ([num_rois] if num_rois >= THREADED_FROM else [])
    assert out.shape == ref_out.shape
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_rois", [20, 300])
@pytest.mark.parametrize("output_size", [7, (5, 3)])
def test_list_of_per_image_boxes_matches_torchvision(num_rois, output_size, threaded_calls):
    features, rois = make_inputs(num_rois)
    boxes = per_image_boxes(rois)
    kwargs = {"spatial_scale": 0.25, "sampling_ratio": 2}
    out, grad = forward_and_grad(roi_align, features, boxes, output_size, **kwargs)
    ref_out, ref_grad = forward_and_grad(torchvision.ops.roi_align, features, boxes, output_size, **kwargs)
    assert threaded_calls == ([num_rois] if num_rois >= THREADED_FROM else [])
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_list_with_a_wrong_box_shape_is_refused():
    features, rois = make_inputs(300)
    with pytest.raises((ValueError, AssertionError), match=r"4"):
        roi_align(features, [rois[:150], rois[150:, 1:]], 7, spatial_scale=0.25, sampling_ratio=2)


@pytest.mark.skipif(not hasattr(torch, "quantize_per_tensor"), reason="this torch has no quantized tensors")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
@pytest.mark.parametrize("num_rois", [20, 300])
@pytest.mark.parametrize("output_size", [7, (5, 3)])
def test_quantized_input_matches_torchvision(num_rois, output_size):
    # torchvision's quantized RoIAlign wants one image and quantized rois of the same dtype
    features, rois = make_inputs(num_rois)
    rois[:, 0] = 0
    q_features = torch.quantize_per_tensor(features[:1] + 4, scale=0.05, zero_point=0, dtype=torch.quint8)
    q_rois = torch.quantize_per_tensor(rois.clamp(max=60), scale=0.25, zero_point=0, dtype=torch.quint8)
    for boxes in (q_rois, [q_rois[:, 1:]]):
        out = roi_align(q_features, boxes, output_size, spatial_scale=0.25, sampling_ratio=2)
        ref = torchvision.ops.roi_align(q_features, boxes, output_size, spatial_scale=0.25, sampling_ratio=2)
        assert out.is_quantized and (out.q_scale(), out.q_zero_point()) == (ref.q_scale(), ref.q_zero_point())
        assert torch.equal(out.int_repr(), ref.int_repr())


# Half-precision features (a model under autocast) are pooled in float32 with float32 boxes,
# then cast back: the result equals torchvision's float32 pooling of the same (upcast)
# features, rounded once. Without autocast torchvision has no such CPU kernel, and the
# threaded path's workers would not see the caller's autocast.
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("num_rois", [20, 300])
@pytest.mark.parametrize("under_autocast", [False, True])
def test_half_precision_features_pool_in_float32(dtype, num_rois, under_autocast, threaded_calls):
    features, rois = make_inputs(num_rois)
    rois[:, 1:] *= 8  # corners up to 960 px, where half-precision boxes would be off by pixels
    half = features.to(dtype)
    kwargs = {"spatial_scale": 1 / 32, "sampling_ratio": 2}
    expected = torchvision.ops.roi_align(half.float(), rois, 7, **kwargs).to(dtype)
    expected_list = torchvision.ops.roi_align(half.float(), per_image_boxes(rois), 7, **kwargs).to(dtype)
    context = torch.autocast("cpu", dtype=dtype) if under_autocast else contextlib.nullcontext()
    with context:
        out = roi_align(half, rois, 7, **kwargs)
        out_list = roi_align(half, per_image_boxes(rois), 7, **kwargs)
    assert threaded_calls == ([num_rois, num_rois] if num_rois >= THREADED_FROM else [])
    assert out.dtype == out_list.dtype == dtype
    assert torch.equal(out, expected) and torch.equal(out_list, expected_list)
    x = half.clone().requires_grad_(True)
    roi_align(x, rois, 7, **kwargs).float().sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype
