"""Box ops against slow, obviously-correct references."""

import itertools

import pytest
import torch
import torchvision

from detkit.ops import (
    BoxCoder,
    batched_nms,
    box_area,
    box_convert,
    box_intersection,
    box_ioa,
    box_iou,
    clip_boxes,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
    masks_to_boxes,
    nms,
    paired_box_iou,
    remove_small_boxes,
    scale_boxes,
)


def random_boxes(n: int, seed: int, size: float = 100.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = 1 + torch.rand(n, 2, generator=g) * size / 2
    return torch.cat([xy, xy + wh], dim=1)


def slow_iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_box_iou_matches_slow_reference():
    a, b = random_boxes(13, 0), random_boxes(7, 1)
    iou = box_iou(a, b)
    for i, j in itertools.product(range(13), range(7)):
        assert iou[i, j].item() == pytest.approx(slow_iou(a[i].tolist(), b[j].tolist()), abs=1e-6)


def test_box_iou_hand_computed_and_degenerate():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 3]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([50 / 150, 0.0, 0.0])
    assert box_iou(b[2:], b[2:]).item() == 0.0  # empty union: 0, not NaN
    assert box_iou(a, torch.zeros((0, 4))).shape == (1, 0)


def test_box_ioa_matches_slow_reference_and_hand_case():
    a, b = random_boxes(11, 2), random_boxes(5, 3)
    ioa = box_ioa(a, b)
    for i, j in itertools.product(range(11), range(5)):
        x0, y0, x1, y1 = a[i].tolist()
        u0, v0, u1, v1 = b[j].tolist()
        inter = max(0.0, min(x1, u1) - max(x0, u0)) * max(0.0, min(y1, v1) - max(y0, v0))
        assert ioa[i, j].item() == pytest.approx(inter / ((x1 - x0) * (y1 - y0)), abs=1e-6)
    window = torch.tensor([[0.0, 0, 10, 10], [4, 4, 4, 4]])
    crowd = torch.tensor([[5.0, 0, 100, 100]])
    assert box_ioa(window, crowd)[:, 0].tolist() == [0.5, 0.0]  # half inside; degenerate -> 0
    assert box_ioa(crowd, window)[0, 0].item() == pytest.approx(50 / (95 * 100))  # not symmetric


def test_nms_matches_greedy_reference():
    boxes = random_boxes(60, 4, size=40.0)
    scores = torch.rand(60, generator=torch.Generator().manual_seed(5))
    kept: list[int] = []
    for i in scores.argsort(descending=True).tolist():
        if all(slow_iou(boxes[i].tolist(), boxes[j].tolist()) <= 0.5 for j in kept):
            kept.append(i)
    assert nms(boxes, scores, 0.5).tolist() == kept
    assert nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).shape == (0,)


def test_box_area_clip_and_small():
    boxes = torch.tensor([[-5.0, -5, 20, 30], [2, 2, 2.5, 10]])
    assert box_area(boxes).tolist() == [25 * 35, 0.5 * 8]
    assert clip_boxes(boxes, (25, 10)).tolist() == [[0, 0, 10, 25], [2, 2, 2.5, 10]]
    assert remove_small_boxes(boxes, 1.0).tolist() == [0]


def test_scale_boxes_from_resized_to_original():
    boxes = torch.tensor([[10.0, 20, 30, 40]])
    assert scale_boxes(boxes, (100, 200), (50, 400)).tolist() == [[20, 10, 60, 20]]


def test_box_coder_round_trip_and_hand_case():
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    ref = torch.tensor([[0.0, 0, 10, 20]])
    gt = torch.tensor([[5.0, 0, 15, 40]])
    deltas = coder.encode(gt, ref)
    # centre moves +5 px on a 10 px wide box: dx = 10 * 0.5; height doubles: dh = 5 * log 2
    assert deltas.tolist()[0] == pytest.approx([5.0, 10 * 10 / 20, 0.0, 5 * torch.log(torch.tensor(2.0)).item()])
    assert coder.decode(deltas, ref)[:, 0].tolist()[0] == pytest.approx(gt.tolist()[0], abs=1e-5)
    a, b = random_boxes(50, 2), random_boxes(50, 3)
    assert torch.allclose(coder.decode(coder.encode(a, b), b)[:, 0], a, atol=1e-3)


def test_box_coder_multi_class_and_clip():
    coder = BoxCoder(clip=1.0)
    ref = torch.tensor([[0.0, 0, 10, 10]])
    deltas = torch.tensor([[0.0, 0, 0, 0, 0, 0, 100.0, 0]])  # two classes, huge dw clipped to 1
    out = coder.decode(deltas, ref)
    assert out.shape == (1, 2, 4)
    width = (out[0, 1, 2] - out[0, 1, 0]).item()
    assert width == pytest.approx(10 * torch.e, rel=1e-5)


def slow_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, thresh: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i].item())
    keep: list[int] = []
    for i in order:
        if all(groups[i] != groups[k] or slow_iou(boxes[i].tolist(), boxes[k].tolist()) <= thresh for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_nms_matches_greedy_reference(seed):
    boxes = random_boxes(60, seed, size=50)
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(60, generator=g)
    groups = torch.randint(0, 3, (60,), generator=g)
    assert batched_nms(boxes, scores, groups, 0.5).tolist() == slow_nms(boxes, scores, groups, 0.5)


def test_batched_nms_empty():
    assert batched_nms(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).numel() == 0


def test_paired_box_iou_is_the_diagonal_of_box_iou_and_broadcasts():
    a, b = random_boxes(9, 4), random_boxes(9, 5)
    b[3] = a[3]  # identical pair
    b[4] = torch.tensor([500.0, 500, 510, 510])  # disjoint pair
    paired = paired_box_iou(a, b)
    assert torch.allclose(paired, box_iou(a, b).diagonal(), atol=1e-6)
    assert paired[3].item() == pytest.approx(1.0) and paired[4].item() == 0.0
    grid = paired_box_iou(a.view(3, 3, 1, 4), b[:2].view(1, 1, 2, 4))  # (3, 3, 1) with (1, 1, 2) -> (3, 3, 2)
    assert torch.allclose(grid, box_iou(a, b[:2]).view(3, 3, 2), atol=1e-6)
    point = torch.tensor([2.0, 2, 2, 2])
    assert paired_box_iou(point, point).item() == 0.0  # empty union: 0, not NaN


# Low-precision and integer boxes: detkit upcasts the way torchvision does (float16 and
# bfloat16 -> float32; integers -> int64, where torchvision stops at int32).

LOW_PRECISION = [torch.float16, torch.bfloat16]


def test_float16_box_of_side_300_has_area_90000_and_iou_1_as_in_torchvision():
    b = torch.tensor([[0.0, 0.0, 300.0, 300.0]]).half()  # 300 * 300 = 90000 > float16 max 65504
    assert box_area(b).tolist() == [90000.0] == torchvision.ops.box_area(b).tolist()
    assert box_iou(b, b).tolist() == [[1.0]] == torchvision.ops.box_iou(b, b).tolist()
    assert box_ioa(b, b).tolist() == [[1.0]]
    assert paired_box_iou(b, b).tolist() == [1.0]
    assert box_intersection(b, b).tolist() == [[90000.0]]


def exactly_representable_boxes(n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Integer corners small enough that ``dtype`` holds them and their differences exactly.

    Then torchvision's intersection (width and height subtracted in ``dtype``, then upcast)
    and detkit's (upcast, then subtracted) do the same arithmetic, and results are equal.
    """
    limit = 256 if dtype == torch.bfloat16 else 1024  # bfloat16: 8 significant bits
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, limit // 2, (n, 2), generator=g)
    wh = torch.randint(1, limit // 2, (n, 2), generator=g)
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


@pytest.mark.parametrize(
    "dtype", [*LOW_PRECISION, torch.float32, torch.float64, torch.int16, torch.int32, torch.int64], ids=str
)
def test_box_area_and_iou_equal_torchvision(dtype):
    a, b = exactly_representable_boxes(40, 0, dtype), exactly_representable_boxes(30, 1, dtype)
    area, ref_area = box_area(a), torchvision.ops.box_area(a)
    assert not area.isinf().any()
    assert torch.equal(area, ref_area.to(area.dtype))
    iou, ref_iou = box_iou(a, b), torchvision.ops.box_iou(a, b)
    assert iou.dtype == ref_iou.dtype
    assert torch.equal(iou, ref_iou)
    assert (iou > 0).sum() > 50  # overlapping pairs, not only zeros
    assert torch.equal(paired_box_iou(a, b[:1].expand_as(a)), ref_iou[:, 0])


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_box_ops_are_float32_exact_on_arbitrary_coordinates(dtype):
    # Arbitrary float16/bfloat16 corners: detkit subtracts after upcasting, so it equals the
    # float64 computation on the same corners to float32 rounding; torchvision subtracts in
    # float16/bfloat16 first and is only close (a width rounded to 11 or 8 significant bits).
    a, b = random_boxes(40, 2, size=600.0).to(dtype), random_boxes(30, 3, size=600.0).to(dtype)
    a64, b64 = a.double(), b.double()
    for fn in (box_area, box_intersection, box_iou, box_ioa):
        args = (a,) if fn is box_area else (a, b)
        args64 = (a64,) if fn is box_area else (a64, b64)
        out = fn(*args)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), fn(*args64), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(paired_box_iou(a, b[:1]).double(), paired_box_iou(a64, b64[:1]), rtol=1e-6, atol=1e-6)
    tolerance = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(box_iou(a, b), torchvision.ops.box_iou(a, b), rtol=0, atol=tolerance)
    torch.testing.assert_close(box_area(a), torchvision.ops.box_area(a), rtol=0, atol=0)


def test_integer_boxes_do_not_wrap_or_overflow():
    # uint8 differences would wrap below zero; int32 areas overflow past 46340 px squared
    small = torch.tensor([[10, 10, 20, 20], [200, 200, 250, 250]], dtype=torch.uint8)
    assert box_intersection(small, small).tolist() == [[100, 0], [0, 2500]]
    assert box_iou(small, small).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    big = torch.tensor([[0, 0, 50000, 50000]], dtype=torch.int32)
    assert box_area(big).tolist() == [2_500_000_000]
    assert box_iou(big, big).tolist() == [[1.0]]


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_nms_of_half_precision_boxes_runs_in_float32(dtype):
    # torchvision has no float16/bfloat16 CPU NMS, and batched NMS offsets each group by the
    # largest coordinate: with corners near 600 the offset boxes would not fit 8 bits of mantissa
    boxes, g = random_boxes(80, 6, size=600.0).to(dtype), torch.Generator().manual_seed(6)
    scores = torch.rand(80, generator=g).to(dtype)
    groups = torch.randint(0, 3, (80,), generator=g)
    wide_boxes, wide_scores = boxes.float(), scores.float()
    assert nms(boxes, scores, 0.5).tolist() == nms(wide_boxes, wide_scores, 0.5).tolist()
    kept = batched_nms(boxes, scores, groups, 0.5).tolist()
    assert kept == slow_nms(wide_boxes, wide_scores, groups, 0.5)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_box_coder_decodes_half_precision_deltas_in_float32(dtype):
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    reference = random_boxes(30, 7, size=900.0)
    deltas = (torch.randn(30, 8, generator=torch.Generator().manual_seed(7)) * 0.5).to(dtype)
    out = coder.decode(deltas, reference)
    assert out.dtype == torch.float32
    assert torch.equal(out, coder.decode(deltas.float(), reference))


# Generalized, distance and complete IoU against torchvision.ops on the same boxes.

PAIRWISE = [
    (generalized_box_iou, torchvision.ops.generalized_box_iou),
    (distance_box_iou, torchvision.ops.distance_box_iou),
    (complete_box_iou, torchvision.ops.complete_box_iou),
]
PAIRWISE_IDS = ["giou", "diou", "ciou"]


def boxes_with_special_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Random boxes where ``(a[i], b[i])`` is identical (0), disjoint (1), nested (2, 4) and enclosing (3)."""
    a, b = random_boxes(12, 20), random_boxes(9, 21)
    b[0] = a[0]
    b[1] = torch.tensor([500.0, 500, 530, 540])
    b[2] = a[2] + torch.tensor([1.0, 0.5, -0.5, -0.25]) * (a[2, 2:] - a[2, :2]).repeat(2) / 4
    b[3] = a[3] + torch.tensor([-3.0, -5, 7, 2])
    centre, half = (a[4, :2] + a[4, 2:]) / 2, (a[4, 2:] - a[4, :2]) / 4
    b[4] = torch.cat([centre - half, centre + half])  # concentric: no centre distance
    return a, b


@pytest.mark.parametrize(("fn", "reference"), PAIRWISE, ids=PAIRWISE_IDS)
def test_pairwise_iou_variants_equal_torchvision_with_gradients(fn, reference):
    a, b = boxes_with_special_pairs()
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    out, expected = fn(a1, b1), reference(a2, b2)
    assert out.shape == (12, 9) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    weights = torch.rand(12, 9, generator=torch.Generator().manual_seed(22))
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(a1.grad, a2.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(b1.grad, b2.grad, rtol=0, atol=1e-6)
    assert out[0, 0].item() == pytest.approx(1.0, abs=1e-6)  # identical boxes
    assert out[1, 1].item() < 0  # disjoint: GIoU and DIoU penalties make it negative
    assert 0 < out[2, 2].item() < 1 and 0 < out[3, 3].item() < 1  # nested and enclosing


def test_pairwise_iou_variants_hand_computed():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 15, 10], [20, 0, 30, 10], [0, 0, 10, 20]])
    # enclosures 15 x 10, 30 x 10, 10 x 20; centre offsets (5, 0), (20, 0), (0, 5)
    assert generalized_box_iou(a, b)[0].tolist() == pytest.approx([1 / 3, 0 - 100 / 300, 1 / 2])
    expected_diou = [1 / 3 - 25 / 325, 0 - 400 / 1000, 1 / 2 - 25 / 500]
    assert distance_box_iou(a, b)[0].tolist() == pytest.approx(expected_diou)
    # third pair: aspect ratios 1 and 1/2, v = 4 / pi^2 * (pi / 4 - atan(1 / 2))^2, alpha = v / (1 - 1/2 + v)
    v = 4 / torch.pi**2 * (torch.pi / 4 - torch.atan(torch.tensor(0.5)).item()) ** 2
    expected_ciou = [*expected_diou[:2], expected_diou[2] - v / (0.5 + v) * v]
    assert complete_box_iou(a, b)[0].tolist() == pytest.approx(expected_ciou)


@pytest.mark.parametrize(("fn", "reference"), PAIRWISE, ids=PAIRWISE_IDS)
def test_pairwise_iou_variants_of_no_boxes(fn, reference):
    some = random_boxes(5, 23)
    for a, b in ((torch.zeros((0, 4)), some), (some, torch.zeros((0, 4))), (torch.zeros((0, 4)), torch.zeros((0, 4)))):
        assert fn(a, b).shape == reference(a, b).shape == (len(a), len(b))


@pytest.mark.parametrize(("fn", "reference"), PAIRWISE, ids=PAIRWISE_IDS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_pairwise_iou_variants_of_half_precision_boxes_are_float32(fn, reference, dtype):
    a, b = random_boxes(20, 24, size=600.0).to(dtype), random_boxes(15, 25, size=600.0).to(dtype)
    out = fn(a, b)
    assert out.dtype == reference(a, b).dtype == torch.float32
    assert torch.equal(out, fn(a.float(), b.float()))
    # torchvision subtracts corners in float16/bfloat16 before upcasting
    tolerance = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out, reference(a, b), rtol=0, atol=tolerance)


@pytest.mark.parametrize("fn", [generalized_box_iou, distance_box_iou, complete_box_iou], ids=PAIRWISE_IDS)
def test_pairwise_iou_variants_of_integer_boxes_equal_float_boxes(fn):
    a, b = exactly_representable_boxes(10, 26, torch.int64), exactly_representable_boxes(8, 27, torch.int64)
    assert torch.equal(fn(a, b), fn(a.float(), b.float()))


def test_generalized_box_iou_gradcheck_float64():
    a, b = random_boxes(4, 28).double().requires_grad_(), random_boxes(3, 29).double().requires_grad_()
    assert torch.autograd.gradcheck(generalized_box_iou, (a, b))
    assert torch.autograd.gradcheck(distance_box_iou, (a, b))


# box_convert and masks_to_boxes against torchvision.ops.

FORMATS = ["xyxy", "xywh", "cxcywh"]


@pytest.mark.parametrize(("in_fmt", "out_fmt"), list(itertools.product(FORMATS, FORMATS)))
def test_box_convert_equals_torchvision(in_fmt, out_fmt):
    boxes = random_boxes(30, 30)
    out = box_convert(boxes, in_fmt, out_fmt)
    torch.testing.assert_close(out, torchvision.ops.box_convert(boxes, in_fmt, out_fmt), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(box_convert(out, out_fmt, in_fmt), boxes, rtol=1e-6, atol=1e-5)  # round trip
    wide = boxes.double()
    torch.testing.assert_close(box_convert(wide, in_fmt, out_fmt), torchvision.ops.box_convert(wide, in_fmt, out_fmt))
    ints = exactly_representable_boxes(30, 31, torch.int64)
    out_int, expected_int = box_convert(ints, in_fmt, out_fmt), torchvision.ops.box_convert(ints, in_fmt, out_fmt)
    assert out_int.dtype == expected_int.dtype
    assert torch.equal(out_int, expected_int)


def test_box_convert_hand_computed_and_batched():
    xyxy = torch.tensor([[10.0, 20, 30, 60]])
    assert box_convert(xyxy, "xyxy", "xywh").tolist() == [[10, 20, 20, 40]]
    assert box_convert(xyxy, "xyxy", "cxcywh").tolist() == [[20, 40, 20, 40]]
    assert box_convert(torch.tensor([[20.0, 40, 20, 40]]), "cxcywh", "xywh").tolist() == [[10, 20, 20, 40]]
    batched = random_boxes(6, 32).view(2, 3, 4)
    assert torch.equal(
        box_convert(batched, "xyxy", "cxcywh").view(6, 4), box_convert(batched.view(6, 4), "xyxy", "cxcywh")
    )
    assert box_convert(torch.zeros((0, 4)), "xywh", "xyxy").shape == (0, 4)
    same = box_convert(xyxy, "xyxy", "xyxy")
    same[0, 0] = -1.0
    assert xyxy[0, 0].item() == 10.0  # equal formats give a copy


@pytest.mark.parametrize(("in_fmt", "out_fmt"), list(itertools.product(FORMATS, FORMATS)))
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_box_convert_half_precision_is_rounded_once(in_fmt, out_fmt, dtype):
    boxes = random_boxes(30, 33, size=600.0).to(dtype)
    out = box_convert(boxes, in_fmt, out_fmt)
    assert out.dtype == torchvision.ops.box_convert(boxes, in_fmt, out_fmt).dtype == dtype
    assert torch.equal(out, box_convert(boxes.double(), in_fmt, out_fmt).to(dtype))
    torch.testing.assert_close(out, torchvision.ops.box_convert(boxes, in_fmt, out_fmt))


@pytest.mark.parametrize(("in_fmt", "out_fmt"), [("xyhw", "xyxy"), ("xyxy", "XYXY"), ("cxcywh", "")])
def test_box_convert_unknown_format_is_a_value_error_naming_it(in_fmt, out_fmt):
    bad = in_fmt if in_fmt not in FORMATS else out_fmt
    with pytest.raises(ValueError, match=f"'{bad}'") as error:
        box_convert(random_boxes(2, 34), in_fmt, out_fmt)
    assert all(repr(name) in str(error.value) for name in FORMATS)


def hand_made_masks(dtype: torch.dtype) -> tuple[torch.Tensor, list[list[float]]]:
    masks = torch.zeros(5, 6, 8)
    masks[0, 2, 5] = 1  # one pixel
    masks[1, 1:4, 2:7] = 1  # rows 1..3, columns 2..6
    masks[2, 0, 7] = masks[2, 5, 0] = 1  # two far corners
    masks[4] = 1  # full
    expected = [[5, 2, 5, 2], [2, 1, 6, 3], [0, 0, 7, 5], [0, 0, 0, 0], [0, 0, 7, 5]]
    return masks.to(dtype), expected


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.float16, torch.float32, torch.float64], ids=str)
def test_masks_to_boxes_hand_made_masks_and_torchvision(dtype):
    masks, expected = hand_made_masks(dtype)
    boxes = masks_to_boxes(masks)
    assert boxes.dtype == torch.float32
    assert boxes.tolist() == expected  # mask 3 is empty: zeros
    assert torch.equal(boxes, torchvision.ops.masks_to_boxes(masks))


def test_masks_to_boxes_counts_any_nonzero_value():
    masks = torch.zeros(1, 4, 4)
    masks[0, 1, 1], masks[0, 2, 3] = 0.5, -1.0
    assert masks_to_boxes(masks).tolist() == [[1, 1, 3, 2]] == torchvision.ops.masks_to_boxes(masks).tolist()


@pytest.mark.parametrize("seed", [0, 1])
def test_masks_to_boxes_random_masks_equal_torchvision(seed):
    g = torch.Generator().manual_seed(seed)
    density = torch.rand(30, 1, 1, generator=g) * 0.05
    masks = torch.rand(30, 15, 17, generator=g) < density  # sparse; some masks empty
    assert (~masks.flatten(1).any(dim=1)).any()
    assert torch.equal(masks_to_boxes(masks), torchvision.ops.masks_to_boxes(masks))


def test_masks_to_boxes_of_no_masks_and_zero_size_masks():
    assert masks_to_boxes(torch.zeros((0, 6, 8), dtype=torch.bool)).shape == (0, 4)
    # H or W zero: every mask is empty, so (N, 4) zeros (torchvision returns (0, 4) here)
    assert masks_to_boxes(torch.zeros((3, 0, 8), dtype=torch.bool)).tolist() == [[0, 0, 0, 0]] * 3
    assert masks_to_boxes(torch.zeros((2, 5, 0))).tolist() == [[0, 0, 0, 0]] * 2


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("max_kept", [1, 7, 100, 5000])
def test_batched_nms_max_kept_is_the_head_of_the_full_run(ties, max_kept):
    """The score-prefix search gives exactly the first max_kept of a full class-wise NMS."""
    g = torch.Generator().manual_seed(max_kept)
    n = 3000
    xy = torch.rand(n, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 60], dim=1)
    scores = torch.rand(n, generator=g)
    if ties:  # many equal scores, also across the prefix boundaries
        scores = (scores * 20).round() / 20
    groups = torch.randint(0, 80, (n,), generator=g)
    full = torchvision.ops.batched_nms(boxes, scores, groups, 0.5)  # 3000 boxes: class by class
    head = batched_nms(boxes, scores, groups, 0.5, max_kept=max_kept)
    if ties:  # equal scores may come in any order: compare the kept sets and their score sequence
        assert torch.equal(scores[head], scores[full[:max_kept]])
        if max_kept >= len(full):
            assert set(head.tolist()) == set(full.tolist())
    else:
        assert torch.equal(head, full[:max_kept])


def test_batched_nms_max_kept_of_nothing_is_empty():
    empty = torch.zeros((0, 4))
    assert batched_nms(empty, torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5, max_kept=10).numel() == 0
