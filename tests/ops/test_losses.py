"""Focal and IoU-family losses against torchvision.ops on the same inputs, hand cases and gradcheck."""

import math

import pytest
import torch
import torchvision

from detkit.ops import (
    complete_box_iou,
    complete_box_iou_loss,
    distance_box_iou,
    distance_box_iou_loss,
    generalized_box_iou,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

REDUCTIONS = ["none", "mean", "sum"]
LOW_PRECISION = [torch.float16, torch.bfloat16]
BOX_LOSSES = [
    (generalized_box_iou_loss, torchvision.ops.generalized_box_iou_loss),
    (distance_box_iou_loss, torchvision.ops.distance_box_iou_loss),
    (complete_box_iou_loss, torchvision.ops.complete_box_iou_loss),
]
BOX_LOSS_IDS = ["giou", "diou", "ciou"]


def random_boxes(n: int, seed: int, size: float = 100.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = 1 + torch.rand(n, 2, generator=g) * size / 2
    return torch.cat([xy, xy + wh], dim=1)


def paired_boxes(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prediction/target pairs; pair 0 identical, 1 disjoint, 2 nested, 3 enclosing, 4 concentric."""
    pred, target = random_boxes(n, seed), random_boxes(n, seed + 1)
    target[0] = pred[0]
    target[1] = torch.tensor([500.0, 500, 530, 540])
    target[2] = pred[2] + torch.tensor([2.0, 1, -0.5, -3]) * (pred[2, 2:] - pred[2, :2]).repeat(2) / 8
    target[3] = pred[3] + torch.tensor([-3.0, -5, 7, 2])
    centre, half = (pred[4, :2] + pred[4, 2:]) / 2, (pred[4, 2:] - pred[4, :2]) / 4
    target[4] = torch.cat([centre - half, centre + half])
    return pred, target


def logits_and_targets(seed: int, soft: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(64, 5, generator=g) * 3
    targets = torch.rand(64, 5, generator=g) if soft else (torch.rand(64, 5, generator=g) < 0.2).float()
    return logits, targets


def assert_same_value_and_gradients(ours, reference, inputs: list[torch.Tensor]) -> torch.Tensor:
    """``ours(*inputs)`` equals ``reference(*inputs)`` and so do the gradients of a random weighting."""
    mine = [x.clone().requires_grad_() for x in inputs]
    theirs = [x.clone().requires_grad_() for x in inputs]
    out, expected = ours(*mine), reference(*theirs)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    weights = torch.rand(out.shape, generator=torch.Generator().manual_seed(99))
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    for x, y in zip(mine, theirs):
        torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=1e-6)
    return out


# sigmoid_focal_loss


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.75, 1.5)])
@pytest.mark.parametrize("soft", [False, True], ids=["binary", "soft"])
def test_sigmoid_focal_loss_equals_torchvision_with_gradients(reduction, alpha, gamma, soft):
    logits, targets = logits_and_targets(1, soft)

    def ours(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction=reduction)

    def reference(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torchvision.ops.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction=reduction)

    out = assert_same_value_and_gradients(ours, reference, [logits, targets])
    assert out.shape == ((64, 5) if reduction == "none" else ())


def test_sigmoid_focal_loss_hand_computed():
    logits = torch.tensor([0.0, 0.0, math.log(3.0)])
    targets = torch.tensor([1.0, 0.0, 1.0])
    # p = 1/2, 1/2, 3/4: alpha_t (1 - p_t)^2 (-log p_t)
    expected = [0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2), 0.25 * (1 / 16) * math.log(4 / 3)]
    assert sigmoid_focal_loss(logits, targets).tolist() == pytest.approx(expected)
    # gamma 0 and no alpha: binary cross-entropy
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    assert sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0, reduction="sum").item() == pytest.approx(bce.item())


def test_sigmoid_focal_loss_of_no_elements():
    logits, targets = torch.zeros((0, 5), requires_grad=True), torch.zeros((0, 5))
    assert sigmoid_focal_loss(logits, targets).shape == (0, 5)
    total = sigmoid_focal_loss(logits, targets, reduction="sum")
    assert total.item() == 0.0
    total.backward()
    assert logits.grad is not None and logits.grad.shape == (0, 5)
    # the mean of nothing is NaN, as torch.mean and torchvision give
    assert sigmoid_focal_loss(logits, targets, reduction="mean").isnan().item()
    assert torchvision.ops.sigmoid_focal_loss(logits, targets, reduction="mean").isnan().item()


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_sigmoid_focal_loss_half_precision_is_computed_in_float32(dtype):
    logits, targets = logits_and_targets(2)
    logits = logits.to(dtype)
    out = sigmoid_focal_loss(logits, targets.to(dtype))
    assert out.dtype == torchvision.ops.sigmoid_focal_loss(logits, targets.to(dtype)).dtype == dtype
    assert torch.equal(out, sigmoid_focal_loss(logits.float(), targets).to(dtype))
    torch.testing.assert_close(out, torchvision.ops.sigmoid_focal_loss(logits, targets.to(dtype)), rtol=2e-2, atol=2e-3)


def test_sigmoid_focal_loss_gradcheck_float64():
    logits, targets = logits_and_targets(3, soft=True)
    logits = logits[:6].double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sigmoid_focal_loss(x, targets[:6].double()), (logits,))


# GIoU, DIoU and CIoU losses


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("ours", "reference"), BOX_LOSSES, ids=BOX_LOSS_IDS)
def test_box_losses_equal_torchvision_with_gradients(ours, reference, reduction):
    pred, target = paired_boxes()

    def mine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ours(a, b, reduction=reduction)

    def theirs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return reference(a, b, reduction=reduction)

    out = assert_same_value_and_gradients(mine, theirs, [pred, target])
    assert out.shape == ((40,) if reduction == "none" else ())
    if reduction == "none":
        assert out[0].item() == pytest.approx(0.0, abs=1e-6)  # identical boxes
        assert out[1].item() > 1  # disjoint
        assert 0 < out[2].item() < 1 and 0 < out[3].item() < 1  # nested, enclosing


@pytest.mark.parametrize(
    ("ours", "pairwise"),
    [
        (generalized_box_iou_loss, generalized_box_iou),
        (distance_box_iou_loss, distance_box_iou),
        (complete_box_iou_loss, complete_box_iou),
    ],
    ids=BOX_LOSS_IDS,
)
def test_box_losses_are_one_minus_the_diagonal_of_the_pairwise_measure(ours, pairwise):
    pred, target = paired_boxes(12, 4)
    torch.testing.assert_close(ours(pred, target), 1 - pairwise(pred, target).diagonal(), rtol=0, atol=1e-6)


def test_box_losses_hand_computed():
    pred = torch.tensor([[0.0, 0, 10, 10], [0, 0, 1, 1], [0, 0, 10, 10]])
    target = torch.tensor([[5.0, 0, 15, 10], [2, 0, 3, 1], [0, 0, 10, 20]])
    # IoU 1/3, 0, 1/2; enclosures 15 x 10, 3 x 1, 10 x 20; centre offsets (5, 0), (2, 0), (0, 5)
    giou = [1 / 3, 0 - 1 / 3, 1 / 2]
    diou = [1 / 3 - 25 / 325, 0 - 4 / 10, 1 / 2 - 25 / 500]
    v = 4 / math.pi**2 * (math.pi / 4 - math.atan(1 / 2)) ** 2  # aspect ratios 1 and 1/2
    ciou = [diou[0], diou[1], diou[2] - v / (1 - 1 / 2 + v) * v]
    assert generalized_box_iou_loss(pred, target).tolist() == pytest.approx([1 - x for x in giou])
    assert distance_box_iou_loss(pred, target).tolist() == pytest.approx([1 - x for x in diou])
    assert complete_box_iou_loss(pred, target).tolist() == pytest.approx([1 - x for x in ciou])


@pytest.mark.parametrize(("ours", "reference"), BOX_LOSSES, ids=BOX_LOSS_IDS)
def test_box_losses_of_no_boxes(ours, reference):
    pred, target = torch.zeros((0, 4), requires_grad=True), torch.zeros((0, 4))
    assert ours(pred, target).shape == reference(pred, target).shape == (0,)
    for reduction in ("mean", "sum"):
        out = ours(pred, target, reduction=reduction)
        assert out.item() == 0.0 == reference(pred, target, reduction=reduction).item()
        out.backward()
        assert pred.grad is not None and pred.grad.shape == (0, 4)


@pytest.mark.parametrize(("ours", "reference"), BOX_LOSSES, ids=BOX_LOSS_IDS)
@pytest.mark.parametrize("dtype", [*LOW_PRECISION, torch.int64], ids=str)
def test_box_losses_of_half_precision_and_integer_boxes_are_float32(ours, reference, dtype):
    pred, target = paired_boxes(20, 5)
    pred, target = (pred * 4).to(dtype), (target * 4).to(dtype)
    out = ours(pred, target)
    assert out.dtype == reference(pred, target).dtype == torch.float32
    assert torch.equal(out, ours(pred.float(), target.float()))
    torch.testing.assert_close(out, reference(pred, target), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "loss", [sigmoid_focal_loss, generalized_box_iou_loss, distance_box_iou_loss, complete_box_iou_loss]
)
def test_unknown_reduction_is_a_value_error_naming_it(loss):
    with pytest.raises(ValueError, match="'average'") as error:
        loss(torch.zeros((2, 4)), torch.ones((2, 4)), reduction="average")
    assert all(repr(name) in str(error.value) for name in REDUCTIONS)


@pytest.mark.parametrize("loss", [generalized_box_iou_loss, distance_box_iou_loss], ids=["giou", "diou"])
def test_box_losses_gradcheck_float64(loss):
    pred, target = paired_boxes(6, 6)
    pred, target = pred[1:].double().requires_grad_(), target[1:].double().requires_grad_()  # no ties
    assert torch.autograd.gradcheck(loss, (pred, target))
