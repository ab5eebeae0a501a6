"""VGG (Simonyan & Zisserman, 2015), with and without batch norm, as layer tables.

A plain stack of 3x3 convolutions (stride 1, padding 1) and 2x2 max pools; the
depth counts the weight layers (convs plus three fully connected ones). Parameter
names follow torchvision's ``vgg*``/``vgg*_bn`` (``features.N``, ``avgpool``,
``classifier.0/3/6``), so its state dicts load directly; torchvision's convs keep
their bias even before batch norm, and so do these.

The table-driven builder :func:`make_features` also builds AlexNet's ``features``.

Shape glossary: N images, C channels, H/W input size, K classes. Stage ``cK`` is the
last map at stride ``2**K`` (before the next pool); for VGG-16 ``c3`` is conv4_3
(SSD's source) and ``c4`` is conv5_3 (Faster R-CNN's), ``c5`` is pool5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from detkit.backbones.registry import ClassifierBackbone


@dataclass(frozen=True)
class ConvSpec:
    """A convolution (followed by [batch norm and] ReLU) of a layer table."""

    channels: int
    kernel: int = 3
    stride: int = 1
    padding: int = 1


@dataclass(frozen=True)
class PoolSpec:
    """A max pool of a layer table."""

    kernel: int = 2
    stride: int = 2


#: A layer table entry: ``int`` is a 3x3 conv with that many channels, ``"M"`` a 2x2 max pool.
LayerSpec = int | str | ConvSpec | PoolSpec

#: The architecture tables (the paper's configurations A, B, D, E), by depth.
VGG_TABLES: dict[int, list[LayerSpec]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}

VGG_STAGES = ("c0", "c1", "c2", "c3", "c4", "c5")
DEFAULT_OUT_FEATURES = ("c2", "c3", "c4", "c5")


@dataclass(frozen=True)
class StageSlice:
    """Stage ``name`` is ``features[start:end]``, with ``channels`` output channels."""

    name: str
    start: int
    end: int
    channels: int


def make_features(
    table: Sequence[LayerSpec], *, in_channels: int = 3, batch_norm: bool = False
) -> tuple[nn.Sequential, list[StageSlice]]:
    """Build a conv stack from a layer table and cut it into stages.

    A stage starts at the input and at every layer that downsamples; it is named
    ``cK`` after its stride ``2**K``.

    Returns:
        ``features`` (conv, [BatchNorm2d,] ReLU per conv; MaxPool2d per pool) and its stages.
    """
    layers: list[nn.Module] = []
    slices: list[StageSlice] = []
    stride, channels, start = 1, in_channels, 0
    for entry in table:
        spec: ConvSpec | PoolSpec
        if isinstance(entry, ConvSpec | PoolSpec):
            spec = entry
        elif entry == "M":
            spec = PoolSpec()
        elif isinstance(entry, int):
            spec = ConvSpec(entry)
        else:
            raise ValueError(f"unknown layer table entry {entry!r}: use an int, 'M', ConvSpec or PoolSpec")
        if spec.stride > 1:  # downsampling: close the current stage, open the next
            if len(layers) > start:
                slices.append(StageSlice(_stage_name(stride), start, len(layers), channels))
            start, stride = len(layers), stride * spec.stride
        if isinstance(spec, PoolSpec):
            layers.append(nn.MaxPool2d(spec.kernel, spec.stride))
        else:
            layers.append(nn.Conv2d(channels, spec.channels, spec.kernel, spec.stride, spec.padding))
            if batch_norm:
                layers.append(nn.BatchNorm2d(spec.channels))
            layers.append(nn.ReLU(inplace=True))
            channels = spec.channels
    slices.append(StageSlice(_stage_name(stride), start, len(layers), channels))
    return nn.Sequential(*layers), slices


def _stage_name(stride: int) -> str:
    level = int(math.log2(stride))
    if 2**level != stride:
        raise ValueError(f"layer table strides must be powers of two, got a cumulative stride of {stride}")
    return f"c{level}"


class VGG(ClassifierBackbone):
    """VGG-11/13/16/19 as a classifier and as a detection trunk.

    Args:
        depth: 11, 13, 16 or 19 (a key of :data:`VGG_TABLES`).
        batch_norm: batch norm after every convolution (torchvision's ``vgg*_bn``).
        dropout: dropout probability of the classifier's hidden layers.
        frozen_stages: freeze the first k stages of ``c0..c5`` (``c0`` is the
            first conv block, at stride 1); frozen batch norms keep their statistics.
        out_features: stages returned by :meth:`forward`, of ``c0..c5``.
        num_classes: K for a classifier (``avgpool`` to 7x7, ``classifier``:
            4096-4096-K); ``None``: trunk only.
        weights: a state-dict file or URL (torchvision's ``vgg*`` format) to load, or ``imagenet`` for
            torchvision's ImageNet weights (downloaded once to ``$DETKIT_CACHE``);
            its classifier is skipped when ``num_classes`` is ``None``.
    """

    def __init__(
        self,
        *,
        depth: int = 16,
        batch_norm: bool = False,
        dropout: float = 0.5,
        frozen_stages: int = 0,
        out_features: Sequence[str] = DEFAULT_OUT_FEATURES,
        num_classes: int | None = None,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if depth not in VGG_TABLES:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_TABLES)}, got {depth}")
        self.features, self._slices = make_features(VGG_TABLES[depth], batch_norm=batch_norm)
        if num_classes is not None:
            channels = self._slices[-1].channels
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(channels * 7 * 7, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(4096, num_classes),
            )
        if weights is None:  # a weight file sets every parameter: skip the (costly) initialization
            self._init_weights()
        self._setup_trunk(
            stage_channels={s.name: s.channels for s in self._slices},
            out_features=out_features,
            frozen_stages=frozen_stages,
            num_classes=num_classes,
        )
        if weights is not None:
            self._load_weights(weights)

    def _init_weights(self) -> None:
        # He init for the ReLU convs (the paper pretrained shallow nets instead).
        self._init_he_fan_out()

    def stages(self) -> list[tuple[str, nn.Module]]:
        """``c0``: first conv block; ``cK`` (K >= 1): the K-th pool and the block after it; ``c5``: pool5."""
        return [(s.name, self.features[s.start : s.end]) for s in self._slices]

    def _head(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (N, 512, h, w) -> (N, 512*7*7)
        return self.classifier(x)


def _vgg_variant(depth: int, batch_norm: bool) -> type[VGG]:
    class _Variant(VGG):
        def __init__(
            self,
            *,
            dropout: float = 0.5,
            frozen_stages: int = 0,
            out_features: Sequence[str] = DEFAULT_OUT_FEATURES,
            num_classes: int | None = None,
            weights: str | None = None,
        ) -> None:
            super().__init__(
                depth=depth,
                batch_norm=batch_norm,
                dropout=dropout,
                frozen_stages=frozen_stages,
                out_features=out_features,
                num_classes=num_classes,
                weights=weights,
            )

    suffix = "_bn" if batch_norm else ""
    _Variant.__name__ = _Variant.__qualname__ = f"VGG{depth}{'BN' if batch_norm else ''}"
    _Variant.registry_name = f"vgg{depth}{'_bn' if batch_norm else ''}"
    _Variant.__doc__ = f"VGG-{depth}{' with batch norm' if batch_norm else ''}; see :class:`VGG` for the arguments."
    _Variant.__module__ = __name__
    VGG_VARIANTS[f"vgg{depth}{suffix}"] = _Variant
    return _Variant


#: Registered name (``vgg16``, ``vgg16_bn``, ...) -> class.
VGG_VARIANTS: dict[str, type[VGG]] = {}

vgg11 = _vgg_variant(11, False)
vgg11_bn = _vgg_variant(11, True)
vgg13 = _vgg_variant(13, False)
vgg13_bn = _vgg_variant(13, True)
vgg16 = _vgg_variant(16, False)
vgg16_bn = _vgg_variant(16, True)
vgg19 = _vgg_variant(19, False)
vgg19_bn = _vgg_variant(19, True)

__all__ = [
    "VGG",
    "VGG_TABLES",
    "VGG_VARIANTS",
    "ConvSpec",
    "PoolSpec",
    "make_features",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
]
