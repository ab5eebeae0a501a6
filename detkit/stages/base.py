"""Stage contracts: one documented ``forward`` signature per stage kind.

A detector is a composition of stages (see docs/ARCHITECTURE.md)::

    images -> Preprocess -> Backbone -> Neck -> Proposer -> RoIHead (RegionExtractor, MaskHead inside)
           -> PostProcess -> list[Detections]

Only the typed containers of :mod:`detkit.structures` cross these boundaries.

Stages that learn (:class:`Proposer`, :class:`RoIHead`, :class:`DenseHead`) return
``(output, losses)``: ``losses`` is a :data:`Losses` dict of scalar losses, empty
at inference, keys ``loss_<stage>_<term>``. The return type never changes with
``self.training``, and neither does its length: a head returns one
:class:`Detections` per image, in training too, where they are empty
(:func:`no_detections`) because only the losses are wanted. Stages that only
transform (:class:`Preprocess`, :class:`Backbone`, :class:`Neck`,
:class:`RegionExtractor`, :class:`PostProcess`) return their output alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from detkit.structures import (
    Detections,
    FeatureMaps,
    ImageBatch,
    Proposals,
    RegionFeatures,
    SampledProposals,
    Targets,
)

#: Scalar losses by name, ``loss_<stage>_<term>``; empty at inference.
Losses = dict[str, Tensor]


@dataclass(frozen=True)
class ClassRows:
    """How the first dimension of a class-dependent tensor is laid out, for fine-tuning across class sets.

    The rows form ``groups`` equal blocks (one per anchor, default box or grid cell);
    each block holds ``lead`` class-independent rows (box terms, objectness), then
    ``per_class`` rows for the background (when ``background``) and for each of the K
    classes in label order. A block has ``lead + (K + background) * per_class`` rows.

    A stage declares its class-dependent tensors with ``class_rows() -> {name: ClassRows}``
    (names relative to the stage); ``train.init_weights`` then keeps the rows of the
    classes a checkpoint shares by name with the new class list, and initializes the
    others as a fresh model would.
    """

    groups: int = 1
    lead: int = 0
    per_class: int = 1
    background: bool = False

    def size(self, num_classes: int) -> int:
        """Rows for ``num_classes`` classes."""
        return self.groups * (self.lead + (num_classes + int(self.background)) * self.per_class)

    def rows(self, num_classes: int, label: int | None) -> list[int]:
        """Row indices of class ``label`` (``None``: the background, or the lead rows when there is none)."""
        block = self.lead + (num_classes + int(self.background)) * self.per_class
        if label is None:
            offsets = list(range(self.lead + (self.per_class if self.background else 0)))
        else:
            start = self.lead + (label + int(self.background)) * self.per_class
            offsets = list(range(start, start + self.per_class))
        return [g * block + o for g in range(self.groups) for o in offsets]


def no_detections(images: ImageBatch) -> list[Detections]:
    """What a head returns in training: one empty :class:`Detections` per image, on the batch's device."""
    device = images.tensor.device
    return [Detections().to(device) for _ in range(len(images))]


class Preprocess(nn.Module):
    """Normalize, resize and pad a list of images into an :class:`ImageBatch`.

    ``forward(images, targets=None) -> (ImageBatch, list[Targets] | None)``

    Args:
        images: N tensors ``(3, H, W)``, float in ``[0, 1]``, RGB.
        targets: optional ground truth per image in original pixels; returned
            rescaled to the resized image (masks resized too).
    """

    def forward(
        self, images: list[Tensor], targets: list[Targets] | None = None
    ) -> tuple[ImageBatch, list[Targets] | None]:
        raise NotImplementedError


class Backbone(nn.Module):
    """Image-level feature extractor (a classifier without its head).

    ``forward(x: Tensor[N, 3, Hp, Wp]) -> FeatureMaps``

    Attributes:
        out_channels: feature name -> channels, for every map returned.
        out_strides: feature name -> stride.
    """

    out_channels: dict[str, int]
    out_strides: dict[str, int]

    def forward(self, x: Tensor) -> FeatureMaps:
        raise NotImplementedError


class Neck(nn.Module):
    """Feature-to-feature transform (FPN and the like).

    ``forward(features: FeatureMaps) -> FeatureMaps``; same attributes as :class:`Backbone`.
    """

    out_channels: dict[str, int]
    out_strides: dict[str, int]

    def forward(self, features: FeatureMaps) -> FeatureMaps:
        raise NotImplementedError


class Proposer(nn.Module):
    """Class-agnostic candidate regions for each image.

    ``forward(images, features, targets=None) -> (list[Proposals], losses)``

    Args:
        images: the preprocessed batch (proposals are in its resized pixels).
        features: image features, or ``None`` when :attr:`needs_features` is False.
        targets: ground truth in resized pixels, in training only.

    Returns:
        One :class:`Proposals` per image, sorted by decreasing ``objectness``;
        losses (``loss_<name>_*``) when the proposer learns and targets are given.

    Attributes:
        needs_features: whether the proposer reads ``features`` (RPN) or raw
            pixels (selective search, sliding windows).
    """

    needs_features: bool = True

    def forward(
        self, images: ImageBatch, features: FeatureMaps | None, targets: list[Targets] | None = None
    ) -> tuple[list[Proposals], Losses]:
        raise NotImplementedError


class RegionExtractor(nn.Module):
    """Pool a fixed-size feature for every box.

    ``forward(images, features, boxes) -> RegionFeatures``

    Args:
        images: the preprocessed batch (R-CNN crops its pixels).
        features: image features (RoI pooling reads them).
        boxes: per image ``(R_i, 4)`` xyxy in resized pixels.
    """

    def forward(self, images: ImageBatch, features: FeatureMaps | None, boxes: list[Tensor]) -> RegionFeatures:
        raise NotImplementedError


class RoIHead(nn.Module):
    """Classify and refine proposals (and predict masks, with a mask head).

    ``forward(images, features, proposals, targets=None) -> (list[Detections], losses)``

    In training the head matches proposals to ``targets``, samples them
    (:class:`~detkit.stages.ProposalSampler`), pools their features with its
    :class:`RegionExtractor` and returns its losses (with a :class:`MaskHead`, the
    mask loss of the positive samples too) and :func:`no_detections`. At inference it returns *raw*
    detections: every (proposal, class) pair with its class-specific box and
    probability, to be filtered by :class:`PostProcess`.

    Masks are predicted for the *final* boxes, so at inference the detector calls
    ``predict_masks(images, features, detections)`` between
    :meth:`PostProcess.select` and :meth:`PostProcess.rescale`: detections filtered
    but still in resized pixels in, the same detections with box-relative masks
    ``(D, M, M)`` (probabilities over each box) out. Without a mask head it returns
    the detections unchanged.

    Args:
        proposals: per image, in resized pixels.
        targets: ground truth in resized pixels (training only); ``masks`` needed
            with a mask head.

    Attributes:
        has_masks: whether the head predicts masks.
    """

    has_masks: bool = False

    def forward(
        self,
        images: ImageBatch,
        features: FeatureMaps | None,
        proposals: list[Proposals],
        targets: list[Targets] | None = None,
    ) -> tuple[list[Detections], Losses]:
        raise NotImplementedError

    def predict_masks(
        self, images: ImageBatch, features: FeatureMaps | None, detections: list[Detections]
    ) -> list[Detections]:
        return detections

    def finish_training(
        self, detector: nn.Module, batches: Iterable[Any], *, device: torch.device, progress: bool = False
    ) -> dict[str, Any] | None:
        """Fit parts learned after the gradient steps (R-CNN's SVMs); returns a summary or ``None``.

        ``detector`` is the detector holding this head (its preprocess and proposer
        run over ``batches``, the training loader's batches).
        """
        return None


class MaskHead(nn.Module):
    """Per-region instance masks, one per class; run by a :class:`RoIHead`.

    ``forward(images, features, boxes) -> Tensor[R, K, M, M]`` mask logits for
    ``boxes`` (per image ``(R_i, 4)`` in resized pixels; regions of image 0 first).

    ``loss(logits, positives, targets) -> Tensor`` (scalar): ``logits`` are the head's
    output for ``[p.proposal_boxes for p in positives]``, the positive
    :class:`~detkit.structures.SampledProposals` of each image; each one's
    ``gt_index`` points at its object in ``targets[i].without_crowd()`` and its
    ``gt_labels`` names the class whose channel is trained. Zero, and still
    differentiable, without positives.

    ``predict(logits, labels) -> Tensor[R, M, M]``: probabilities of each region's
    class ``labels (R,)``, box-relative (the post-processing pastes them).

    Attributes:
        mask_size: M.
    """

    mask_size: int

    def forward(self, images: ImageBatch, features: FeatureMaps | None, boxes: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def loss(self, logits: Tensor, positives: list[SampledProposals], targets: list[Targets]) -> Tensor:
        raise NotImplementedError

    def predict(self, logits: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError


class DenseHead(nn.Module):
    """Single-shot head: dense predictions on feature maps, no proposals.

    ``forward(images, features, targets=None) -> (list[Detections], losses)``; the
    detections are raw, as for :class:`RoIHead` (:func:`no_detections` in training).

    A head that slides over an image pyramid (OverFeat) says so with
    :meth:`image_scales`: the detector then runs the backbone once per scale and
    hands the head every level in one :class:`~detkit.structures.FeatureMaps`
    (see :meth:`FeatureMaps.pyramid <detkit.structures.FeatureMaps.pyramid>`).
    """

    def forward(
        self, images: ImageBatch, features: FeatureMaps, targets: list[Targets] | None = None
    ) -> tuple[list[Detections], Losses]:
        raise NotImplementedError

    def image_scales(self) -> list[float]:
        """Factors the detector resizes the batch by before the backbone; ``[1.0]``: no pyramid.

        Read on every forward, so a head may pick fewer scales in training than at inference.
        """
        return [1.0]


class PostProcess(nn.Module):
    """Raw detections -> final detections in original image pixels.

    ``forward(detections, images) -> list[Detections]`` is ``rescale(select(...))``:

    * ``select(detections, images)``: clip to the image, drop low scores and tiny
      boxes, class-wise NMS, keep the top k; boxes stay in resized pixels.
    * ``rescale(detections, images)``: boxes to ``images.original_sizes``; masks,
      when present, are box-relative ``(D, M, M)`` probabilities and are pasted into
      the original image at full resolution, ``(D, H, W)``.

    A two-stage detector calls the two halves itself, predicting masks in between
    (see :class:`RoIHead`).
    """

    def forward(self, detections: list[Detections], images: ImageBatch) -> list[Detections]:
        return self.rescale(self.select(detections, images), images)

    def select(self, detections: list[Detections], images: ImageBatch) -> list[Detections]:
        raise NotImplementedError

    def rescale(self, detections: list[Detections], images: ImageBatch) -> list[Detections]:
        raise NotImplementedError


__all__ = [
    "Backbone",
    "ClassRows",
    "DenseHead",
    "Detections",
    "FeatureMaps",
    "ImageBatch",
    "Losses",
    "MaskHead",
    "Neck",
    "PostProcess",
    "Preprocess",
    "Proposals",
    "Proposer",
    "RegionExtractor",
    "RegionFeatures",
    "RoIHead",
    "SampledProposals",
    "Targets",
    "no_detections",
]
