"""detkit's CPU RoIAlign (gather and threaded paths) equals torchvision's, values and gradients."""

import contextlib
import sys

import pytest
import torch
import torchvision

from detkit.ops import roi_align
from detkit.ops.roi_align import MIN_ROIS_PER_THREAD

#: The gather and threaded paths start at this many regions.
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


@pytest.mark.parametrize("sampling_ratio", [2, -1], ids=["gather", "threads"])
def test_gradcheck_in_double(monkeypatch, sampling_ratio, threaded_calls):
    monkeypatch.setattr(sys.modules["detkit.ops.roi_align"], "MIN_ROIS_PER_THREAD", 2)
    features, rois = make_inputs(6, torch.float64)
    features = features[:, :2, :8, :8].contiguous().requires_grad_(True)
    rois[:, 1:] /= 4

    def fn(x):
        return roi_align(x, rois, (3, 3), spatial_scale=0.5, sampling_ratio=sampling_ratio)

    assert torch.autograd.gradcheck(fn, (features,), eps=1e-6, atol=1e-5)
    assert threaded_calls and set(threaded_calls) == {6}


def edge_rois(height: int, width: int, stride: float, num_images: int) -> torch.Tensor:
    """Regions that hit every border rule of the kernel, in image pixels, each on every image:
    beyond the map, straddling each edge, on the last row and column, thinner than a cell,
    empty, inverted, and ordinary ones."""
    h, w = height * stride, width * stride
    boxes = torch.tensor([
        [-40.0, -40.0, -20.0, -20.0],  # wholly outside, above left: every sample empty
        [w + 10, h + 10, w + 60, h + 60],  # wholly outside, below right
        [-15.0, -15.0, 20.0, 30.0],  # straddles the top-left corner
        [w - 20, h - 25, w + 15, h + 5],  # straddles the bottom-right corner
        [w - stride, 0.0, w, h],  # the last column
        [0.0, h - stride, w, h],  # the last row
        [5.0, 5.0, 5.2, 5.1],  # thinner than a cell
        [7.0, 7.0, 7.0, 7.0],  # empty
        [30.0, 30.0, 10.0, 12.0],  # inverted
        [0.0, 0.0, w, h],  # the whole map
        [3.3, 8.7, 41.9, 27.1],
        [12.5, 1.25, 19.75, 60.5],
        # with 4 x 3 bins of one sample, unaligned: samples exactly on the far edges
        # (x = W and y = H cells, still read) and on the near ones (x = y = -1, also read)
        [(width - 1.5) * stride, (height - 2.5) * stride, (width + 1.5) * stride, (height + 1.5) * stride],
        [-1.5 * stride, -1.5 * stride, 1.5 * stride, 2.5 * stride],
    ])
    return torch.cat([torch.cat([torch.full((len(boxes), 1), float(n)), boxes], 1) for n in range(num_images)])


@pytest.mark.parametrize("num_images", [1, 2])  # one image: the (H*W, C) view of NCHW features is not contiguous
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_gather_path_matches_torchvision_at_every_border(num_images, sampling_ratio, aligned, dtype, threaded_calls):
    g = torch.Generator().manual_seed(2)
    features = torch.randn(num_images, 5, 9, 13, generator=g, dtype=dtype)
    rois = edge_rois(9, 13, 4.0, num_images).to(dtype).repeat(3, 1)  # >= 32 regions: the gather path
    kwargs = {"spatial_scale": 0.25, "sampling_ratio": sampling_ratio, "aligned": aligned}
    out, grad = forward_and_grad(roi_align, features, rois, (4, 3), **kwargs)
    ref_out, ref_grad = forward_and_grad(torchvision.ops.roi_align, features, rois, (4, 3), **kwargs)
    assert threaded_calls == [len(rois)]
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
    torch.testing.assert_close(grad, ref_grad, rtol=10 * tol, atol=10 * tol)
    assert ref_out[0].abs().sum() == 0 and out[0].abs().sum() == 0  # the region beyond the map reads nothing


def test_gather_path_keeps_channels_last(threaded_calls):
    features, rois = make_inputs(300)
    nhwc = features.contiguous(memory_format=torch.channels_last)
    kwargs = {"spatial_scale": 0.25, "sampling_ratio": 2}
    out, grad = forward_and_grad(roi_align, nhwc, rois, 7, **kwargs)
    ref_out, ref_grad = forward_and_grad(roi_align, features, rois, 7, **kwargs)
    assert threaded_calls == [300, 300]
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert torch.equal(out, ref_out)  # the same gather, only the copy to NCHW differs
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)


def test_no_rois():
    features, _ = make_inputs(1)
    assert roi_align(features, torch.zeros((0, 5)), (7, 7), spatial_scale=1.0, sampling_ratio=2).shape == (0, 8, 7, 7)


def per_image_boxes(rois: torch.Tensor, num_images: int = 3) -> list[torch.Tensor]:
    """``(R, 5)`` rois -> one ``(R_n, 4)`` box tensor per image, in image order."""
    return [rois[rois[:, 0] == n, 1:] for n in range(num_images)]


@pytest.fixture
def threaded_calls(monkeypatch):
    """The region counts of the calls that take detkit's own paths, gather (a fixed sampling
    ratio) or threads (adaptive), so that a test knows which path it checked."""
    module = sys.modules["detkit.ops.roi_align"]
    calls: list[int] = []
    threaded, gather = module._ParallelRoIAlign.apply, module._gather_roi_align

    def spy_threaded(*args):
        calls.append(args[1].shape[0])
        return threaded(*args)

    def spy_gather(features, rois, *args):
        calls.append(rois.shape[0])
        return gather(features, rois, *args)

    monkeypatch.setattr(module._ParallelRoIAlign, "apply", spy_threaded)
    monkeypatch.setattr(module, "_gather_roi_align", spy_gather)
    return calls


def forward_and_grad(fn, features, boxes, output_size, **kwargs):
    x = features.clone().requires_grad_(True)
    out = fn(x, boxes, output_size, **kwargs)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * upstream).sum().backward()
    return out.detach(), x.grad


# The threaded path's forward outputs equal torchvision's exactly: every region is pooled by
# the same torchvision kernel on its own, so splitting the regions into chunks changes no
# arithmetic. The gather path sums each bin's weighted samples in another order (and folds
# the 1/4 average into the weights, exactly), so its outputs are equal up to float32
# rounding of a 16-term sum. The feature gradient sums over regions, in another order in
# both paths: equal up to float32 rounding of sums of a few hundred terms.
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
    assert out.shape == ref_out.shape and out.is_contiguous()
    if sampling_ratio > 0:
        torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    else:
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
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
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
    # one rounding to half precision of float32 values equal up to float32 rounding
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out_list, expected_list)
    x = half.clone().requires_grad_(True)
    roi_align(x, rois, 7, **kwargs).float().sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype


def pyramid(num_images: int = 2, dtype: torch.dtype = torch.float32) -> tuple[list[torch.Tensor], list[float]]:
    g = torch.Generator().manual_seed(3)
    sizes = [(24, 32), (12, 16), (6, 8), (3, 4)]
    maps = [torch.randn(num_images, 6, h, w, generator=g, dtype=dtype) for h, w in sizes]
    return maps, [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def pyramid_rois(num_rois: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    xy = torch.rand(num_rois, 2, generator=g, dtype=dtype) * torch.tensor([128.0, 96.0], dtype=dtype) - 8
    wh = torch.rand(num_rois, 2, generator=g, dtype=dtype) ** 2 * 120 + 0.5
    index = torch.randint(0, 2, (num_rois, 1), generator=g).to(dtype)
    levels = torch.randint(0, 4, (num_rois,), generator=g)
    return torch.cat([index, xy, xy + wh], dim=1), levels


def torchvision_by_level(maps, rois, levels, output_size, scales, **kwargs):
    """The oracle: torchvision's RoIAlign of each level's regions, scattered back in order."""
    out = torch.zeros(rois.shape[0], maps[0].shape[1], *output_size, dtype=maps[0].dtype)
    for level, (feature, scale) in enumerate(zip(maps, scales, strict=True)):
        idx = torch.where(levels == level)[0]
        out = out.index_put((idx,), torchvision.ops.roi_align(feature, rois[idx], output_size, scale, **kwargs))
    return out


@pytest.mark.parametrize("num_rois", [20, 300])  # 20: one torchvision call per level
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_multiscale_roi_align_matches_torchvision_level_by_level(num_rois, aligned, channels_last, threaded_calls):
    from detkit.ops import multiscale_roi_align

    maps, scales = pyramid()
    if channels_last:
        maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    rois, levels = pyramid_rois(num_rois)
    kwargs = {"sampling_ratio": 2, "aligned": aligned}
    grads, outs = [], []
    for fn in ("detkit", "torchvision"):
        xs = [m.clone().requires_grad_(True) for m in maps]
        if fn == "detkit":
            out = multiscale_roi_align(xs, rois, levels, (7, 5), spatial_scales=scales, **kwargs)
        else:
            out = torchvision_by_level(xs, rois, levels, (7, 5), scales, **kwargs)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(5))).sum().backward()
        outs.append(out.detach())
        grads.append([x.grad for x in xs])
    assert threaded_calls == ([num_rois] if num_rois >= THREADED_FROM else [])  # one gather for all levels
    kept_nhwc = channels_last and num_rois >= THREADED_FROM  # the gather path keeps the layout
    assert outs[0].is_contiguous(memory_format=torch.channels_last if kept_nhwc else torch.contiguous_format)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-6)
    for ours, ref in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_multiscale_roi_align_pools_half_precision_in_float32(dtype):
    from detkit.ops import multiscale_roi_align

    maps, scales = pyramid()
    rois, levels = pyramid_rois(300)
    half = [m.to(dtype) for m in maps]
    out = multiscale_roi_align(half, rois, levels, 7, spatial_scales=scales, sampling_ratio=2)
    expected = torchvision_by_level([m.float() for m in half], rois, levels, (7, 7), scales, sampling_ratio=2)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected.to(dtype))


def test_multiscale_gradcheck_in_double(monkeypatch):
    from detkit.ops import multiscale_roi_align

    monkeypatch.setattr(sys.modules["detkit.ops.roi_align"], "MIN_ROIS_PER_THREAD", 2)
    maps, scales = pyramid(dtype=torch.float64)
    maps = [m[:, :2, :6, :6].contiguous().requires_grad_(True) for m in maps[:2]]
    rois, levels = pyramid_rois(8, torch.float64)
    rois[:, 1:] /= 4

    def fn(*xs):
        return multiscale_roi_align(xs, rois, levels % 2, (3, 3), spatial_scales=scales[:2], sampling_ratio=2)

    assert torch.autograd.gradcheck(fn, tuple(maps), eps=1e-6, atol=1e-5)
