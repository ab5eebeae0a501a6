"""Which pixels matter (CS231n lecture 12): saliency, occlusion, class models, DeepDream.

Every method explains one scalar *target score* per image, given as a
:data:`ScoreFn` ``(N, C, H, W) -> (N,)`` that must be differentiable for the
gradient methods:

* :class:`ClassScore`: a classifier's logit of one class (the unnormalised score,
  not the softmax: the softmax of a class can rise by pushing other classes down,
  which is not evidence for the class itself; Simonyan et al. 2014, sec. 2);
* :class:`DetectionScore`: a detector's score of one detection, found again in each
  (perturbed) image as the best-scoring detection of the same class that overlaps
  the chosen box with IoU > 0.5.

Images are float tensors in the model's input range (``[0, 1]`` for detkit
classifiers and detectors, which normalise inside).

Shape glossary: N images, C channels, H/W image size, D detections.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.errors import DetkitError
from detkit.ops import box_iou
from detkit.stages import ResizeNormalize
from detkit.structures import Detections

__all__ = [
    "ClassScore",
    "DetectionScore",
    "PickedDetection",
    "ScoreFn",
    "class_model_visualization",
    "deep_dream",
    "detector_forward",
    "layer_output",
    "occlusion_map",
    "pick_detection",
    "saliency_map",
]

#: ``(N, C, H, W)`` images -> ``(N,)`` target scores.
ScoreFn = Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------- targets


class ClassScore:
    """The logit of class ``class_index``: ``images -> model(images)[:, class_index]``.

    Args:
        model: ``(N, C, H, W) -> (N, K)`` logits (a detkit classifier, or any module).
        class_index: the class ``k`` to explain.
    """

    def __init__(self, model: Callable[[Tensor], Tensor], class_index: int) -> None:
        self.model = model
        self.class_index = int(class_index)

    def __call__(self, images: Tensor) -> Tensor:
        return self.model(images)[:, self.class_index]


@dataclass(frozen=True)
class PickedDetection:
    """One detection of an image: ``box`` ``(4,)`` xyxy pixels, class ``label``, ``score`` and its ``index``."""

    box: Tensor
    label: int
    score: float
    index: int


def _resize_normalize(preprocess: ResizeNormalize, images: Sequence[Tensor]) -> Tensor:
    """:class:`ResizeNormalize` at inference with out-of-place ops only: ``N x (3, H, W) -> (N, 3, Hp, Wp)``."""
    min_size = preprocess.min_sizes[-1]
    resized = []
    for image in images:
        x = (image - preprocess.pixel_mean) / preprocess.pixel_std
        h, w = x.shape[-2:]
        scale = min(min_size / min(h, w), preprocess.max_size / max(h, w))
        # (3, H, W) -> (1, 3, H, W) -> (1, 3, h', w') -> (3, h', w')
        resized.append(F.interpolate(
            x[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
        )[0])
    stride = float(preprocess.size_divisible)
    max_h = int(math.ceil(max(x.shape[-2] for x in resized) / stride) * stride)
    max_w = int(math.ceil(max(x.shape[-1] for x in resized) / stride) * stride)
    return torch.stack([F.pad(x, (0, max_w - x.shape[-1], 0, max_h - x.shape[-2])) for x in resized])


def detector_forward(detector: nn.Module, images: Tensor) -> list[Detections]:
    """A detkit detector's detections for ``(N, 3, H, W)`` images, differentiable with respect to them.

    ``detector(list(images))``, except that when gradients are wanted and the
    detector preprocesses with :class:`~detkit.stages.preprocess.ResizeNormalize`,
    whose padding copies into a batch in place (a step autograd cannot
    differentiate), the backbone's input is replaced by the same tensor computed
    with out-of-place ops (checked to be equal), so gradients reach the pixels.
    """
    pre = getattr(detector, "preprocess", None)
    backbone = getattr(detector, "backbone", None)
    if not (torch.is_grad_enabled() and images.requires_grad) or not isinstance(pre, ResizeNormalize) \
            or not isinstance(backbone, nn.Module):
        detections, _ = detector(list(images))
        return list(detections)
    tensor = _resize_normalize(pre, list(images))

    def swap(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        original = args[0]
        if original.shape != tensor.shape or not torch.allclose(original, tensor.detach(), rtol=1e-4, atol=1e-5):
            raise RuntimeError("the differentiable copy of the detector's preprocessing does not match it")
        return (tensor, *args[1:])

    handle = backbone.register_forward_pre_hook(swap)
    try:
        detections, _ = detector([image.detach() for image in images])
    finally:
        handle.remove()
    return list(detections)


def pick_detection(detector: nn.Module, image: Tensor, index: int | None = None) -> PickedDetection:
    """Run ``detector`` (eval mode) once on ``image`` ``(3, H, W)`` and pick a detection.

    Args:
        index: the detection's index in the detector's output (sorted by score);
            ``None`` picks the highest score.

    Raises:
        DetkitError: the detector finds nothing, or ``index`` is out of range.
    """
    with torch.no_grad():
        (dets,) = detector_forward(detector, image[None])
    if len(dets.scores) == 0:
        raise DetkitError(
            "the detector finds nothing in the image, so there is no detection to explain; try another "
            "image or lower the score threshold (model.postprocess.score_thresh=0.01)"
        )
    if index is None:
        index = int(dets.scores.argmax())
    if not 0 <= index < len(dets.scores):
        raise DetkitError(
            f"--detection {index}: the image has {len(dets.scores)} detections (0..{len(dets.scores) - 1})"
        )
    return PickedDetection(
        box=dets.boxes[index].detach().clone(), label=int(dets.labels[index]), score=float(dets.scores[index]),
        index=index,
    )


class DetectionScore:
    """A detector's score for "the same detection" in each image of a batch.

    The detection is found again as the highest-scoring output of class ``label``
    whose box overlaps ``box`` with IoU > ``iou_thresh``; an image where none
    does scores 0 (the occluder made the detection vanish). The forward pass is
    the detector's own (eval mode) and is not wrapped in ``no_grad``: gradients
    flow from the detection scores through the RoI head, the region features and
    the backbone to the pixels.

    Args:
        detector: a detkit detector in eval mode: ``detector(list of (3, H, W))
            -> (list[Detections], losses)``.
        box: ``(4,)`` xyxy, in the pixels of the images this is called on.
        label: the detection's class index.
    """

    def __init__(self, detector: nn.Module, *, box: Tensor, label: int, iou_thresh: float = 0.5) -> None:
        self.detector = detector
        self.box = box.detach().reshape(1, 4)
        self.label = int(label)
        self.iou_thresh = iou_thresh

    @classmethod
    def pick(
        cls, detector: nn.Module, image: Tensor, index: int | None = None
    ) -> tuple[DetectionScore, PickedDetection]:
        """The score of detection ``index`` (default: the best) of ``image`` (see :func:`pick_detection`)."""
        picked = pick_detection(detector, image, index)
        return cls(detector, box=picked.box, label=picked.label), picked

    def __call__(self, images: Tensor) -> Tensor:
        scores = []
        for image, dets in zip(images, detector_forward(self.detector, images)):
            iou = box_iou(self.box.to(dets.boxes), dets.boxes)[0]  # (1, D) -> (D,)
            match = (dets.labels == self.label) & (iou > self.iou_thresh)
            if bool(match.any()):
                scores.append(dets.scores[match].max())
            else:  # the detection is gone; keep the graph connected so backward() still works
                scores.append(image.sum() * 0.0)
        return torch.stack(scores)


# ----------------------------------------------------------------------------- saliency and occlusion


def saliency_map(score_fn: ScoreFn, image: Tensor) -> Tensor:
    """Simonyan et al. (2014) saliency: ``max_c |d score / d image[c, y, x]|``.

    Args:
        score_fn: the target score (differentiable).
        image: ``(C, H, W)``.

    Returns:
        ``(H, W)`` non-negative saliency. For a linear score ``w . x`` it is
        ``max_c |w[c]|``, whatever the image.
    """
    x = image.detach()[None].clone().requires_grad_(True)
    with torch.enable_grad():
        score = score_fn(x).sum()
        (grad,) = torch.autograd.grad(score, x)
    return grad[0].abs().amax(dim=0)  # (C, H, W) -> (H, W)


def _positions(size: int, patch: int, stride: int) -> list[int]:
    """Patch offsets along one axis, the last one flush with the border so every pixel is covered."""
    last = max(size - patch, 0)
    offsets = list(range(0, last + 1, stride))
    if offsets[-1] != last:
        offsets.append(last)
    return offsets


def occlusion_map(
    score_fn: ScoreFn,
    image: Tensor,
    *,
    patch: int,
    stride: int | None = None,
    fill: float | Tensor = 0.5,
    batch_size: int = 16,
) -> Tensor:
    """Zeiler & Fergus (2014) occlusion: how much the score drops when a grey patch hides a region.

    A ``patch x patch`` square of value ``fill`` slides over the image with
    ``stride``; each pixel gets the mean score drop ``score(image) -
    score(occluded)`` over the patch positions that cover it.

    Args:
        score_fn: the target score (run under ``no_grad``).
        image: ``(C, H, W)``.
        patch: side of the occluder in pixels.
        stride: step between positions (default ``patch``: non-overlapping).
        fill: the occluder's value, a float or a ``(C,)`` tensor (e.g. the mean pixel).
        batch_size: occluded images scored per call of ``score_fn``.

    Returns:
        ``(H, W)`` score drop; positive where hiding the pixels lowers the score.
    """
    if patch < 1:
        raise ValueError(f"occlusion patch must be at least 1 pixel, got {patch}")
    stride = patch if stride is None else stride
    if stride < 1:
        raise ValueError(f"occlusion stride must be at least 1 pixel, got {stride}")
    c, h, w = image.shape
    fill_t = torch.as_tensor(fill, dtype=image.dtype, device=image.device).reshape(-1, 1, 1).expand(c, 1, 1)
    boxes = [(y, x) for y in _positions(h, patch, stride) for x in _positions(w, patch, stride)]
    drop_sum = image.new_zeros((h, w))
    count = image.new_zeros((h, w))
    with torch.no_grad():
        base = score_fn(image[None])[0]
        for start in range(0, len(boxes), batch_size):
            chunk = boxes[start : start + batch_size]
            batch = image[None].repeat(len(chunk), 1, 1, 1)
            for i, (y, x) in enumerate(chunk):
                batch[i, :, y : y + patch, x : x + patch] = fill_t
            drops = base - score_fn(batch)
            for (y, x), drop in zip(chunk, drops):
                drop_sum[y : y + patch, x : x + patch] += drop
                count[y : y + patch, x : x + patch] += 1
    return drop_sum / count.clamp(min=1)


# ----------------------------------------------------------------------------- layer outputs


class _Stop(Exception):
    """Raised by a forward hook to end a forward pass once the layer of interest has run."""


@contextmanager
def _capture(layer: nn.Module, store: list[Tensor], *, stop: bool) -> Iterator[None]:
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"layer {type(module).__name__} returns a {type(output).__name__}, not a tensor; "
                "pick a layer that returns one (a convolution, say)"
            )
        # a later in-place op (ReLU(inplace=True)) would overwrite the output when the pass goes on
        store.append(output if stop else output.clone())
        if stop:
            raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def layer_output(forward: Callable[[Tensor], Any], layer: nn.Module, images: Tensor) -> Tensor:
    """The output of ``layer`` when ``forward(images)`` runs; the pass stops right after the layer.

    Gradients flow to ``images`` when called with grad enabled.

    Args:
        forward: runs the network on ``(N, C, H, W)`` images (for a detector:
            ``lambda x: detector(list(x))``).
        layer: a sub-module that ``forward`` calls and that returns a tensor.

    Returns:
        The layer's output, e.g. ``(N, C', h, w)``.

    Raises:
        ValueError: the forward pass never reached ``layer``.
    """
    store: list[Tensor] = []
    with _capture(layer, store, stop=True), suppress(_Stop):
        forward(images)
    if not store:
        raise ValueError(f"the forward pass did not run layer {type(layer).__name__}")
    return store[0]


# ----------------------------------------------------------------------------- image synthesis


def _jitter(x: Tensor, generator: torch.Generator, max_shift: int) -> tuple[int, int]:
    if max_shift <= 0:
        return 0, 0
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
    return dy, dx


def class_model_visualization(
    model: Callable[[Tensor], Tensor],
    class_indices: Sequence[int],
    shape: tuple[int, int, int],
    *,
    neutral: float | Tensor = 0.0,
    steps: int = 200,
    lr: float = 0.02,
    l2_reg: float = 0.1,
    jitter: int = 1,
    value_range: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> Tensor:
    """Simonyan et al. (2014) class models: ``argmax_I  S_k(I) - l2_reg * ||I - neutral||^2``.

    Gradient ascent (Adam) on one image per class, starting at ``neutral`` plus a
    little noise. Each step shifts the image by a random ``jitter`` (a cheap
    regulariser against high-frequency patterns that only work pixel-aligned) and
    clamps it to ``value_range``.

    Args:
        model: ``(N, C, H, W) -> (N, K)`` logits (eval mode).
        class_indices: the classes to visualise, one image each.
        shape: ``(C, H, W)`` of the model's input.
        neutral: the image the L2 term pulls towards: the dataset mean, which is
            zero in the model's normalised input space as in the paper.
        steps, lr: the ascent.
        l2_reg: weight of the L2 term; its scale is the logits' (0.1 suits a LeNet on
            digits: recognisable digits on a grey background; smaller values give
            saturated, noisier images that score just as high).
        jitter: largest random shift in pixels (0: none).

    Returns:
        ``(len(class_indices), C, H, W)`` images.
    """
    generator = torch.Generator().manual_seed(seed)
    params = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    device = params.device if params is not None else torch.device("cpu")
    n = len(class_indices)
    neutral_t = torch.as_tensor(neutral, dtype=torch.float32).reshape(-1, 1, 1).to(device)
    noise = 0.01 * torch.randn((n, *shape), generator=generator).to(device)
    x = (neutral_t.expand(*shape) + noise).clamp(*value_range).requires_grad_(True)
    targets = torch.as_tensor(list(class_indices), dtype=torch.long, device=device)
    optimizer = torch.optim.Adam([x], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            dy, dx = _jitter(x, generator, jitter)
            shifted = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
            scores = model(shifted).gather(1, targets[:, None])[:, 0]
            objective = scores - l2_reg * (x - neutral_t).pow(2).flatten(1).sum(1)
            optimizer.zero_grad()
            (-objective.sum()).backward()  # the optimiser descends; ascend the objective
            optimizer.step()
            with torch.no_grad():
                x.clamp_(*value_range)
    return x.detach()


def deep_dream(
    forward: Callable[[Tensor], Any],
    layer: nn.Module,
    image: Tensor,
    *,
    steps: int = 20,
    lr: float = 0.02,
    jitter: int = 2,
    value_range: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> Tensor:
    """DeepDream (Mordvintsev et al., 2015): amplify whatever ``layer`` already sees in ``image``.

    Each step maximises ``0.5 * ||a||^2`` for the layer's activations ``a``, whose
    gradient with respect to ``a`` is ``a`` itself ("the network sees a bit of a
    dog: make it see more dog"). The step is the input gradient normalised by its
    mean magnitude (so ``lr`` is in pixel units whatever the layer's scale), taken
    on a randomly shifted copy of the image (``jitter``), which spreads the
    patterns instead of letting them lock to the pixel grid.

    Args:
        forward: runs the network on ``(N, C, H, W)`` (see :func:`layer_output`).
        layer: the layer whose activations are amplified.
        image: ``(C, H, W)``.

    Returns:
        The dreamed ``(C, H, W)`` image, clamped to ``value_range``.
    """
    generator = torch.Generator().manual_seed(seed)
    x = image.detach().clone()
    for _ in range(steps):
        dy, dx = _jitter(x, generator, jitter)
        shifted = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))[None].requires_grad_(True)
        with torch.enable_grad():
            activations = layer_output(forward, layer, shifted)
            (grad,) = torch.autograd.grad(0.5 * activations.pow(2).sum(), shifted)
        grad = torch.roll(grad[0], shifts=(-dy, -dx), dims=(-2, -1))
        x = (x + lr * grad / grad.abs().mean().clamp(min=1e-12)).clamp(*value_range)
    return x
