"""Detectors as stage compositions, and the one adapter from config to constructors.

:func:`build_detector` is the only place that reads a config to build a model;
every stage takes typed keyword arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from detkit.errors import ConfigError
from detkit.plugins import ComponentRegistry
from detkit.stages.base import Backbone, DenseHead, Losses, Neck, PostProcess, Preprocess, Proposer, RoIHead
from detkit.stages.postprocess import DetectionPostProcess
from detkit.stages.preprocess import ResizeNormalize
from detkit.structures import Detections, FeatureMaps, Targets


class TwoStageDetector(nn.Module):
    """Proposals, then per-region classification: R-CNN, Fast R-CNN, Faster R-CNN, Mask R-CNN.

    ``forward(images, targets=None) -> (list[Detections], losses)``

    At inference the post-processing runs in two halves with the masks between
    them: ``postprocess.select`` filters the raw detections (resized pixels),
    ``roi_head.predict_masks`` predicts box-relative masks for those final boxes (a
    no-op without a mask head), ``postprocess.rescale`` maps boxes to the original
    images and pastes the masks at full resolution.

    Args (of forward):
        images: N tensors ``(3, H, W)``, float RGB in ``[0, 1]``, any sizes.
        targets: ground truth in the images' pixels; required in training.

    Returns:
        Detections in the input images' pixels (empty in training; with
        ``masks (D, H, W)`` probabilities when :attr:`has_masks`) and the losses
        (empty at inference).

    Without a backbone (R-CNN) no image-level features exist: the proposer reads
    pixels and the RoI head runs its own network on crops.

    Attributes:
        has_masks: whether the RoI head predicts masks (evaluation then scores segm too).
    """

    def __init__(
        self,
        *,
        preprocess: Preprocess,
        backbone: Backbone | None,
        neck: Neck | None,
        proposer: Proposer,
        roi_head: RoIHead,
        postprocess: PostProcess,
    ) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.neck = neck
        self.proposer = proposer
        self.roi_head = roi_head
        self.postprocess = postprocess
        self.has_masks = roi_head.has_masks

    def extract_features(self, tensor: Tensor) -> FeatureMaps | None:
        if self.backbone is None:
            return None
        features = self.backbone(tensor)
        return self.neck(features) if self.neck is not None else features

    def finish_training(
        self, batches: Iterable[Any], *, device: torch.device, progress: bool = False
    ) -> dict[str, Any] | None:
        """Fit what is fitted after the gradient steps (R-CNN's SVMs); ``None`` when nothing is.

        The trainer calls it once, after the last step and before the final
        evaluation, with the training batches.
        """
        return self.roi_head.finish_training(self, batches, device=device, progress=progress)

    def forward(
        self, images: list[Tensor], targets: list[Targets] | None = None
    ) -> tuple[list[Detections], Losses]:
        if self.training and targets is None:
            raise ValueError("a detector in training mode needs targets")
        batch, targets = self.preprocess(images, targets)
        features = self.extract_features(batch.tensor)
        proposals, proposal_losses = self.proposer(
            batch, features if self.proposer.needs_features else None, targets
        )
        raw, head_losses = self.roi_head(batch, features, proposals, targets)
        losses = {**proposal_losses, **head_losses}
        if self.training:
            return raw, losses
        detections = self.postprocess.select(raw, batch)
        detections = self.roi_head.predict_masks(batch, features, detections)
        return self.postprocess.rescale(detections, batch), losses


class DenseDetector(nn.Module):
    """The parts of a detector without proposals: preprocess, backbone [-> neck], dense head, post-process.

    The base of the single-stage detectors (SSD, YOLO; plugin ``detkit_single_shot``)
    and of the sliding-window detector (plugin ``detkit_sliding_window``); each
    subclass writes its ``forward`` around :meth:`extract_features` and its dense head.

    ``forward(images, targets=None) -> (list[Detections], losses)``

    Args (of forward):
        images: N tensors ``(3, H, W)``, float RGB in ``[0, 1]``, any sizes.
        targets: ground truth in the images' pixels; required in training.

    Returns:
        Detections in the input images' pixels (empty in training) and the dense
        head's losses (empty at inference).
    """

    def __init__(
        self,
        *,
        preprocess: Preprocess,
        backbone: Backbone,
        neck: Neck | None = None,
        dense_head: DenseHead,
        postprocess: PostProcess,
    ) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.neck = neck
        self.dense_head = dense_head
        self.postprocess = postprocess

    def extract_features(self, tensor: Tensor) -> FeatureMaps:
        """Backbone (then neck) features of a padded batch ``(N, 3, Hp, Wp)``."""
        features = self.backbone(tensor)
        return self.neck(features) if self.neck is not None else features


def build_backbone_and_neck(model: Mapping[str, Any], registry: ComponentRegistry) -> tuple[Backbone, Neck | None]:
    """``model.backbone`` and, when set, ``model.neck`` (built on the backbone's channels and strides)."""
    backbone = registry.build("backbone", model["backbone"], key="model.backbone")
    neck = None
    if model.get("neck"):
        neck = registry.build(
            "neck", model["neck"], key="model.neck", in_channels=backbone.out_channels, in_strides=backbone.out_strides
        )
    return backbone, neck


def _channels(module: Backbone | Neck, key: str) -> int:
    channels = set(module.out_channels.values())
    if len(channels) != 1:
        raise ConfigError(
            f"{key}: the heads need feature maps of one channel count, got {module.out_channels}; "
            "add a neck (e.g. model.neck.name=fpn)"
        )
    return channels.pop()


def build_two_stage(model: Mapping[str, Any], registry: ComponentRegistry, *, num_classes: int) -> nn.Module:
    """Build a :class:`TwoStageDetector` from the ``model`` config section.

    ``model.mask_head`` (optional) is built with ``in_channels`` and ``num_classes``
    and handed to the RoI head as ``mask_head``.
    """
    backbone, neck = build_backbone_and_neck(model, registry)
    channels = _channels(neck or backbone, "model.neck")
    proposer = registry.build("proposer", model["proposer"], key="model.proposer", in_channels=channels)
    extractor = registry.build("region_extractor", model["region_extractor"], key="model.region_extractor")
    mask_kwargs: dict[str, Any] = {}
    if model.get("mask_head"):
        mask_kwargs["mask_head"] = registry.build(
            "mask_head", model["mask_head"], key="model.mask_head", in_channels=channels, num_classes=num_classes
        )
    roi_head = registry.build(
        "roi_head", model["roi_head"], key="model.roi_head",
        region_extractor=extractor, in_channels=channels, num_classes=num_classes, **mask_kwargs,
    )
    return TwoStageDetector(
        preprocess=ResizeNormalize(**model["preprocess"]),
        backbone=backbone,
        neck=neck,
        proposer=proposer,
        roi_head=roi_head,
        postprocess=DetectionPostProcess(**model["postprocess"]),
    )


def build_rcnn(model: Mapping[str, Any], registry: ComponentRegistry, *, num_classes: int) -> nn.Module:
    """Build R-CNN (``model.type: rcnn``): a :class:`TwoStageDetector` without image-level features.

    ``model.backbone`` is the CNN run on every warped crop; it is handed to the RoI
    head (``model.roi_head``, e.g. ``{name: rcnn}``) as ``network`` together with the
    ``model.region_extractor`` (e.g. ``{name: warped_crops}``). The proposer must read
    pixels (e.g. selective search); ``model.neck`` is not used.
    """
    spec = model.get("proposer") or {}
    if getattr(registry.get("proposer", str(spec.get("name"))).factory, "needs_features", True):
        raise ConfigError(
            f"model.proposer: R-CNN computes no image features, but {spec.get('name')!r} needs them; "
            "use a pixel proposer such as selective_search or sliding_window"
        )
    proposer = registry.build("proposer", spec, key="model.proposer")
    network = registry.build("backbone", model["backbone"], key="model.backbone")
    extractor = registry.build("region_extractor", model["region_extractor"], key="model.region_extractor")
    roi_head = registry.build(
        "roi_head", model["roi_head"], key="model.roi_head",
        region_extractor=extractor, network=network, num_classes=num_classes,
    )
    return TwoStageDetector(
        preprocess=ResizeNormalize(**model["preprocess"]),
        backbone=None,
        neck=None,
        proposer=proposer,
        roi_head=roi_head,
        postprocess=DetectionPostProcess(**model["postprocess"]),
    )


def build_detector(config: Mapping[str, Any], registry: ComponentRegistry, *, num_classes: int) -> nn.Module:
    """Build the detector a resolved config describes (``model.type`` selects the family)."""
    model = config["model"]
    builder = registry.get("detector", str(model.get("type", "two_stage"))).factory
    return builder(model, registry, num_classes=num_classes)
