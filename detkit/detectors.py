"""Detectors as stage compositions, and the one adapter from config to constructors.

Every detector is a :class:`Detector`: :class:`TwoStageDetector` (proposals, then
RoI heads: R-CNN to Mask R-CNN) or :class:`DenseDetector` (a dense head on
features: SSD, YOLO, sliding windows). The builders here (and the detector
factories plugins register, which call :func:`build_dense` and
:func:`build_backbone_and_neck`) are the only places that read a config to build
a model; every stage takes typed keyword arguments.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.errors import ConfigError
from detkit.ops.winograd import use_winograd
from detkit.registry import ComponentRegistry
from detkit.stages import ResizeNormalize
from detkit.stages.base import (
    Backbone,
    DenseHead,
    Losses,
    Neck,
    PostProcess,
    Preprocess,
    Proposer,
    RoIHead,
)
from detkit.structures import Detections, FeatureMaps, ImageBatch, Targets, validate_targets


class Detector(nn.Module):
    """What every detector shares: preprocess, backbone [-> neck], post-process, and the forward contract.

    ``forward(images, targets=None) -> (list[Detections], losses)``

    Args (of forward):
        images: N tensors ``(3, H, W)``, float RGB in ``[0, 1]``, any sizes.
        targets: ground truth in the images' pixels; required in training, checked
            on the way in (:func:`~detkit.structures.validate_targets`).

    Returns:
        One :class:`~detkit.structures.Detections` per image in the input images'
        pixels (empty in training) and the losses (empty at inference).

    Subclasses add the stages between features and post-processing and write
    ``forward`` around :meth:`_prepare`, :meth:`extract_features` and :meth:`_finish`.
    """

    def __init__(
        self, *, preprocess: Preprocess, backbone: Backbone | None, neck: Neck | None, postprocess: PostProcess
    ) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.neck = neck
        self.postprocess = postprocess
        #: run the backbone and neck on channels-last tensors (see :meth:`use_channels_last`)
        self.channels_last = False

    def use_channels_last(self, enabled: bool = True) -> Detector:
        """Store the convolution weights and the image batch channels-last (NHWC).

        oneDNN's CPU convolutions and cuDNN's tensor-core ones run faster on NHWC; the
        outputs are the same up to float rounding. Returns the detector.
        """
        self.channels_last = enabled
        fmt = torch.channels_last if enabled else torch.contiguous_format
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data = module.weight.data.contiguous(memory_format=fmt)
        return self

    def use_winograd(self, enabled: bool = True) -> Detector:
        """Run the wide 3x3, stride-1 convolutions as Winograd ``F(4x4, 3x3)`` on the CPU.

        A quarter of the multiplications (:mod:`detkit.ops.winograd`): the FPN and RPN
        convolutions of an R50-FPN run in about half the time, forward and backward.
        Parameters are shared, so checkpoints and optimizers are unaffected; outputs
        are the same up to float rounding (a few times a direct convolution's). CUDA,
        autocast, export and ``torch.compile`` keep the direct convolutions. Returns
        the detector.
        """
        use_winograd(self, enabled)
        return self

    def compile_trunk(self, **options: Any) -> Detector:
        """Compile the backbone and neck with ``torch.compile`` (``options`` go to it); returns the detector.

        Compiled in place (:meth:`torch.nn.Module.compile`), so parameter names and
        checkpoints are unchanged. The first call of each new input shape compiles
        (tens of seconds on a CPU; inductor caches the result on disk for later
        processes); after one shape change the code is recompiled for dynamic shapes.

        Without ``options`` inductor's ``freezing`` is on: calls under ``torch.no_grad``
        (``detect``, ``eval``, ``benchmark``) take the weights as constants, so oneDNN
        gets them packed once instead of reordering them at every call (SSD300 221 ms
        against 229 ms, Faster R-CNN R50-FPN 1375-1438 against 1445 ms, 2 CPU cores).
        Weights loaded after the first call are then not seen; compile last.
        """
        if not options:
            options = {"options": {"freezing": True}}
        for part in (self.backbone, self.neck):
            if part is not None:
                part.compile(**options)
        return self

    def extract_features(self, tensor: Tensor) -> FeatureMaps | None:
        """Backbone (then neck) features of a padded batch ``(N, 3, Hp, Wp)``; ``None`` without a backbone."""
        if self.backbone is None:
            return None
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        features = self.backbone(tensor)
        return self.neck(features) if self.neck is not None else features

    def _prepare(self, images: list[Tensor], targets: list[Targets] | None) -> tuple[ImageBatch, list[Targets] | None]:
        """Check the inputs, then preprocess them."""
        if self.training and targets is None:
            raise ValueError("a detector in training mode needs targets")
        if targets is not None:
            if len(targets) != len(images):
                raise ValueError(f"got {len(images)} images but {len(targets)} targets")
            validate_targets(targets)
        return self.preprocess(images, targets)


class TwoStageDetector(Detector):
    """Proposals, then per-region classification: R-CNN, Fast R-CNN, Faster R-CNN, Mask R-CNN.

    ``forward`` as :class:`Detector`'s. At inference the post-processing runs in two
    halves with the masks between them: ``postprocess.select`` filters the raw
    detections (resized pixels), ``roi_head.predict_masks`` predicts box-relative
    masks for those final boxes (a no-op without a mask head),
    ``postprocess.rescale`` maps boxes to the original images and pastes the masks at
    full resolution (``masks (D, H, W)`` probabilities when :attr:`has_masks`).

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
        super().__init__(preprocess=preprocess, backbone=backbone, neck=neck, postprocess=postprocess)
        self.proposer = proposer
        self.roi_head = roi_head
        self.has_masks = roi_head.has_masks

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
        batch, targets = self._prepare(images, targets)
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


class DenseDetector(Detector):
    """No proposals: preprocess -> backbone [-> neck] -> dense head -> post-process.

    Single-stage detectors (SSD, YOLO; plugin ``detkit_single_shot``) and the
    sliding-window detector (plugin ``detkit_sliding_window``) are this class with
    different heads and preprocessing. ``forward`` as :class:`Detector`'s.

    When the head asks for an image pyramid (:meth:`DenseHead.image_scales
    <detkit.stages.DenseHead.image_scales>` other than ``[1.0]``), the backbone runs
    once per scale on the resized batch and the head receives every level in one
    :class:`~detkit.structures.FeatureMaps` (:meth:`~detkit.structures.FeatureMaps.pyramid`).
    """

    backbone: Backbone

    def __init__(
        self,
        *,
        preprocess: Preprocess,
        backbone: Backbone,
        neck: Neck | None = None,
        dense_head: DenseHead,
        postprocess: PostProcess,
    ) -> None:
        super().__init__(preprocess=preprocess, backbone=backbone, neck=neck, postprocess=postprocess)
        self.dense_head = dense_head

    def forward(
        self, images: list[Tensor], targets: list[Targets] | None = None
    ) -> tuple[list[Detections], Losses]:
        batch, targets = self._prepare(images, targets)
        raw, losses = self.dense_head(batch, self.extract_features(batch.tensor), targets)
        return (raw if self.training else self.postprocess(raw, batch)), losses

    def extract_features(self, tensor: Tensor) -> FeatureMaps:
        """What the head reads: the features of ``(N, 3, Hp, Wp)`` at each of its image scales.

        Plain backbone (then neck) features when the head's scales are ``[1.0]``.
        """
        scales = self.dense_head.image_scales()
        if scales == [1.0]:
            return self._trunk(tensor)
        levels, factors = [], []
        for scale in scales:
            resized, factor = _resize_batch(tensor, scale)
            levels.append(self._trunk(resized))
            factors.append(factor)
        return FeatureMaps.pyramid(levels, factors)

    def _trunk(self, tensor: Tensor) -> FeatureMaps:
        features = self.backbone(tensor)
        return self.neck(features) if self.neck is not None else features


def _resize_batch(tensor: Tensor, scale: float) -> tuple[Tensor, tuple[float, float]]:
    """``(N, 3, Hp, Wp)`` resized by ``scale`` (sides rounded), and the exact ``(sy, sx)`` it got."""
    height, width = tensor.shape[-2:]
    scaled_h, scaled_w = max(1, round(height * scale)), max(1, round(width * scale))
    if (scaled_h, scaled_w) != (height, width):
        # (N, 3, Hp, Wp) -> (N, 3, Hp * s, Wp * s)
        tensor = F.interpolate(tensor, size=(scaled_h, scaled_w), mode="bilinear", align_corners=False)
    return tensor, (scaled_h / height, scaled_w / width)


def build_backbone_and_neck(model: Mapping[str, Any], registry: ComponentRegistry) -> tuple[Backbone, Neck | None]:
    """``model.backbone`` and, when set, ``model.neck`` (built on the backbone's channels and strides).

    Both must give feature maps finest first, at strides that are powers of two
    (:func:`check_feature_maps`).
    """
    backbone = registry.build("backbone", model["backbone"], key="model.backbone")
    check_feature_maps(backbone, "model.backbone")
    neck = None
    if model.get("neck"):
        neck = registry.build(
            "neck", model["neck"], key="model.neck", in_channels=backbone.out_channels, in_strides=backbone.out_strides
        )
        check_feature_maps(neck, "model.neck")
    return backbone, neck


def check_feature_maps(source: Backbone | Neck, key: str) -> None:
    """Raise a :class:`ConfigError` unless ``source`` names the same maps in ``out_channels`` and
    ``out_strides``, at least one, with strides that are powers of two and never shrink from map to map.

    Maps may share a stride (MobileNetV3's ``c5_entry`` and ``c5``, the FPN's ``p5_entry`` and ``p5``).
    """
    names, strides = list(source.out_channels), source.out_strides
    if not names:
        raise ConfigError(f"{key}: gives no feature map; check its out_features")
    if list(strides) != names:
        raise ConfigError(
            f"{key}: out_channels names {names} but out_strides names {list(strides)}; they must name the "
            "same maps in the same order"
        )
    values = [strides[n] for n in names]
    bad = [f"{n}={v}" for n, v in zip(names, values) if not (isinstance(v, int) and v > 0 and v & (v - 1) == 0)]
    if bad:
        raise ConfigError(f"{key}: strides must be powers of two (2, 4, 8, ...); got {', '.join(bad)}")
    if any(a > b for a, b in itertools.pairwise(values)):
        order = ", ".join(f"{n} (stride {v})" for n, v in zip(names, values))
        raise ConfigError(f"{key}: feature maps must come finest first (strides never shrinking); got {order}")


def check_in_features(component: Any, source: Backbone | Neck, key: str) -> None:
    """Raise a :class:`ConfigError` when ``component.in_features`` names a map ``source`` does not give."""
    wanted = getattr(component, "in_features", None)
    if not wanted:
        return
    missing = [name for name in wanted if name not in source.out_channels]
    if missing:
        raise ConfigError(
            f"{key}.in_features names {', '.join(missing)}, which the backbone/neck does not give; it gives "
            f"{', '.join(source.out_channels)} (set {key}.in_features to some of those, finest first)"
        )


def _channels(module: Backbone | Neck, key: str) -> int:
    channels = set(module.out_channels.values())
    if len(channels) != 1:
        raise ConfigError(
            f"{key}: the heads need feature maps of one channel count, got {module.out_channels}; "
            "add a neck (e.g. model.neck.name=fpn)"
        )
    return channels.pop()


def build_preprocess(model: Mapping[str, Any], *, fixed_size: Sequence[int] | None = None) -> ResizeNormalize:
    """The preprocessing of ``model.preprocess``; ``fixed_size`` resizes every image to exactly that size."""
    return ResizeNormalize(**model["preprocess"], fixed_size=fixed_size)


def build_postprocess(model: Mapping[str, Any], registry: ComponentRegistry) -> PostProcess:
    """The post-processing component of ``model.postprocess`` (``{name: nms, ...}`` by default)."""
    return registry.build("postprocess", model["postprocess"], key="model.postprocess")


def build_two_stage(model: Mapping[str, Any], registry: ComponentRegistry, *, num_classes: int) -> TwoStageDetector:
    """Build a :class:`TwoStageDetector` from the ``model`` config section.

    ``model.mask_head`` (optional) is built with ``in_channels`` and ``num_classes``
    and handed to the RoI head as ``mask_head``.
    """
    backbone, neck = build_backbone_and_neck(model, registry)
    channels = _channels(neck or backbone, "model.neck")
    proposer = registry.build(
        "proposer", model["proposer"], key="model.proposer",
        in_channels=channels, in_strides=dict((neck or backbone).out_strides),
    )
    extractor = registry.build("region_extractor", model["region_extractor"], key="model.region_extractor")
    mask_kwargs: dict[str, Any] = {}
    if model.get("mask_head"):
        mask_kwargs["mask_head"] = registry.build(
            "mask_head", model["mask_head"], key="model.mask_head", in_channels=channels, num_classes=num_classes
        )
    for component, key in ((extractor, "model.region_extractor"), (mask_kwargs.get("mask_head"), "model.mask_head")):
        check_in_features(component, neck or backbone, key)
    roi_head = registry.build(
        "roi_head", model["roi_head"], key="model.roi_head",
        region_extractor=extractor, in_channels=channels, num_classes=num_classes, **mask_kwargs,
    )
    return _two_stage(model, registry, backbone=backbone, neck=neck, proposer=proposer, roi_head=roi_head)


def build_rcnn(model: Mapping[str, Any], registry: ComponentRegistry, *, num_classes: int) -> TwoStageDetector:
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
    return _two_stage(model, registry, backbone=None, neck=None, proposer=proposer, roi_head=roi_head)


def _two_stage(
    model: Mapping[str, Any],
    registry: ComponentRegistry,
    *,
    backbone: Backbone | None,
    neck: Neck | None,
    proposer: Proposer,
    roi_head: RoIHead,
) -> TwoStageDetector:
    """A :class:`TwoStageDetector` of the given stages with ``model``'s pre- and post-processing."""
    return TwoStageDetector(
        preprocess=build_preprocess(model),
        backbone=backbone,
        neck=neck,
        proposer=proposer,
        roi_head=roi_head,
        postprocess=build_postprocess(model, registry),
    )


def build_dense(
    model: Mapping[str, Any], registry: ComponentRegistry, *, num_classes: int, preprocess: Preprocess
) -> DenseDetector:
    """Build a :class:`DenseDetector` from the ``model`` config section, with the given preprocessing.

    The helper of the dense detector types (``single_stage``, ``sliding_window``):
    ``model.backbone``, the optional ``model.neck`` and ``model.dense_head``, built
    with ``num_classes`` and, for the maps it reads, ``in_channels`` and
    ``in_strides`` (lists, finest first) and ``in_features`` (their names), each only
    if the head's factory takes it; the post-processing of ``model.postprocess``.
    ``model.proposer``, ``model.region_extractor`` and ``model.roi_head`` are not used.
    """
    if not model.get("dense_head"):
        raise ConfigError(
            f"model.dense_head: model.type {model.get('type')!r} needs a dense head "
            "(e.g. {name: ssd}, {name: yolo_grid} or {name: overfeat})"
        )
    backbone, neck = build_backbone_and_neck(model, registry)
    source = neck or backbone
    dense_head = registry.build(
        "dense_head", model["dense_head"], key="model.dense_head", num_classes=num_classes,
        in_channels=list(source.out_channels.values()), in_strides=list(source.out_strides.values()),
        in_features=list(source.out_channels),
    )
    return DenseDetector(
        preprocess=preprocess,
        backbone=backbone,
        neck=neck,
        dense_head=dense_head,
        postprocess=build_postprocess(model, registry),
    )


def build_detector(config: Mapping[str, Any], registry: ComponentRegistry, *, num_classes: int) -> nn.Module:
    """Build the detector a resolved config describes (``model.type`` selects the family).

    ``model.channels_last`` builds it with channels-last convolutions
    (:meth:`Detector.use_channels_last`) and ``model.winograd`` with Winograd 3x3 ones
    (:meth:`Detector.use_winograd`), for training and inference alike.
    """
    model = config["model"]
    builder = registry.get("detector", str(model.get("type", "two_stage"))).factory
    detector = builder(model, registry, num_classes=num_classes)
    if isinstance(detector, Detector):
        if model.get("channels_last"):
            detector.use_channels_last()
        if model.get("winograd"):
            detector.use_winograd()
    return detector


__all__ = [
    "DenseDetector",
    "Detector",
    "TwoStageDetector",
    "build_backbone_and_neck",
    "build_dense",
    "build_detector",
    "build_postprocess",
    "build_preprocess",
    "build_rcnn",
    "build_two_stage",
    "check_feature_maps",
    "check_in_features",
]
