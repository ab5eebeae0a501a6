"""MobileNetV3 (Howard et al., 2019), Large and Small, as classifiers and detection backbones.

MobileNetV3 stacks *inverted residual* blocks (MobileNetV2, Sandler et al., 2018): a
1x1 convolution expands the channels, a k x k depthwise convolution filters each
channel alone (and downsamples, when the block has stride 2), an optional
squeeze-and-excitation module (Hu et al., 2018) rescales the channels by weights
computed from their global average, and a linear 1x1 convolution projects back to
few channels; a block that keeps the size and the channels adds its input. The
nonlinearity is ReLU in the early blocks and hard-swish ``x * relu6(x + 3) / 6`` in
the later ones, where its cost is lower (the maps are small); the SE gate is a hard
sigmoid. The block sequence (kernel, expansion, output channels, SE, activation,
stride) was found by architecture search; it is the paper's Tables 1 and 2, here as
data (:data:`MOBILENET_V3_TABLES`).

Parameter names follow torchvision's ``mobilenet_v3_large``/``mobilenet_v3_small``
(``features.N``, ``features.N.block.M.0/1``, ``fc1``/``fc2`` of the SE modules,
``classifier.0/3``), so its classifier state dicts load as they are, and its detection
models' ``backbone.body.N`` keys are ``features.N``. Numerics follow torchvision too:
torchvision's classifiers use batch norm with ``eps=0.001`` (the default
``norm_eps``), its detection models frozen batch norm with ``eps=1e-5``.

Stages (``cK``: the last map at stride ``2**K``), for Large (Small):

- ``c1``: the stem conv (16 channels) [and the first block];
- ``c2``..``c4``: the blocks up to the last one before the next stride-2 block;
- ``c5_entry``: the first block at stride 32 alone, the one that downsamples
  (Large: ``features.13``, 160 channels; Small: ``features.9``, 96), the map torchvision's
  mobile FPN reads next to ``c5``;
- ``c5``: the remaining blocks and the last 1x1 conv (Large 960 channels, Small 576).

With ``dilated`` the blocks from ``c5_entry`` on keep stride 16 and dilate their
depthwise convolutions by 2 instead (``c5_entry`` and ``c5`` then have stride 16);
``reduced_tail`` halves the channels of those blocks (torchvision's options, used by
its segmentation and SSDlite models).

The building blocks (:class:`ConvNormActivation`, :class:`SqueezeExcitation`,
:class:`InvertedResidual`, :func:`block_configs`, :func:`make_features`) are public, for
detectors that cut the trunk elsewhere (SSDlite reads the expansion inside
``c5_entry``'s block).

Shape glossary: N images, C channels, H/W input size, K classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from detkit.backbones.norm import FrozenBatchNorm2d, make_norm
from detkit.backbones.registry import ClassifierBackbone

#: Builds the normalization layer of a convolution with that many output channels.
NormLayer = Callable[[int], nn.Module]


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never more than 10% below it.

    MobileNets keep every channel count a multiple of 8 (efficient on hardware) when
    ``width_mult`` scales them.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def norm_layer(kind: str, *, eps: float = 0.001, momentum: float = 0.01) -> NormLayer:
    """The norm builder of ``kind``: ``bn`` (``eps``, ``momentum``), ``frozen_bn`` (``eps``), ``gn`` or ``none``."""
    if kind == "bn":
        return partial(nn.BatchNorm2d, eps=eps, momentum=momentum)
    if kind == "frozen_bn":
        return partial(FrozenBatchNorm2d, eps=eps)
    make_norm(kind, 8)  # an unknown kind is an error here, naming the choices
    return partial(make_norm, kind)


# -- the architecture tables ------------------------------------------------------------------


@dataclass(frozen=True)
class BlockSpec:
    """One inverted residual block of a table, at width multiplier 1.

    Attributes:
        kernel: depthwise kernel size (3 or 5).
        expanded: channels after the 1x1 expansion (the depthwise width).
        out: output channels.
        se: whether a squeeze-and-excitation module follows the depthwise conv.
        activation: ``"RE"`` (ReLU) or ``"HS"`` (hard-swish).
        stride: 1 or 2 (the depthwise conv's).
    """

    kernel: int
    expanded: int
    out: int
    se: bool
    activation: str
    stride: int


@dataclass(frozen=True)
class MobileNetV3Table:
    """An architecture: stem channels, the blocks, and the classifier's hidden width."""

    stem: int
    blocks: tuple[BlockSpec, ...]
    last_channel: int


_B = BlockSpec

#: The paper's Table 1 (Large) and Table 2 (Small).
MOBILENET_V3_TABLES: dict[str, MobileNetV3Table] = {
    "large": MobileNetV3Table(
        stem=16,
        blocks=(
            _B(3, 16, 16, False, "RE", 1),
            _B(3, 64, 24, False, "RE", 2),
            _B(3, 72, 24, False, "RE", 1),
            _B(5, 72, 40, True, "RE", 2),
            _B(5, 120, 40, True, "RE", 1),
            _B(5, 120, 40, True, "RE", 1),
            _B(3, 240, 80, False, "HS", 2),
            _B(3, 200, 80, False, "HS", 1),
            _B(3, 184, 80, False, "HS", 1),
            _B(3, 184, 80, False, "HS", 1),
            _B(3, 480, 112, True, "HS", 1),
            _B(3, 672, 112, True, "HS", 1),
            _B(5, 672, 160, True, "HS", 2),
            _B(5, 960, 160, True, "HS", 1),
            _B(5, 960, 160, True, "HS", 1),
        ),
        last_channel=1280,
    ),
    "small": MobileNetV3Table(
        stem=16,
        blocks=(
            _B(3, 16, 16, True, "RE", 2),
            _B(3, 72, 24, False, "RE", 2),
            _B(3, 88, 24, False, "RE", 1),
            _B(5, 96, 40, True, "HS", 2),
            _B(5, 240, 40, True, "HS", 1),
            _B(5, 240, 40, True, "HS", 1),
            _B(5, 120, 48, True, "HS", 1),
            _B(5, 144, 48, True, "HS", 1),
            _B(5, 288, 96, True, "HS", 2),
            _B(5, 576, 96, True, "HS", 1),
            _B(5, 576, 96, True, "HS", 1),
        ),
        last_channel=1024,
    ),
}


@dataclass(frozen=True)
class BlockConfig:
    """One inverted residual block with its channels resolved (width multiplier, reduced tail, dilation).

    ``stride`` is the table's; a dilated block (``dilation > 1``) convolves at stride 1.
    """

    in_channels: int
    kernel: int
    expanded: int
    out: int
    se: bool
    activation: str
    stride: int
    dilation: int = 1

    @property
    def conv_stride(self) -> int:
        """The depthwise convolution's stride: 1 when dilated, else :attr:`stride`."""
        return 1 if self.dilation > 1 else self.stride


def block_configs(
    arch: str, *, width_mult: float = 1.0, reduced_tail: bool = False, dilated: bool = False
) -> tuple[int, list[BlockConfig], int]:
    """Resolve a table of :data:`MOBILENET_V3_TABLES`: ``(stem channels, blocks, classifier hidden width)``.

    Every channel count is scaled by ``width_mult`` and rounded by :func:`make_divisible`.
    The *tail* is the blocks from the last stride-2 one on: ``reduced_tail`` halves
    their output channels (and the expansion of those whose input is already halved)
    and the classifier's hidden width; ``dilated`` dilates their depthwise convs by 2.
    """
    if arch not in MOBILENET_V3_TABLES:
        raise ValueError(f"unknown MobileNetV3 architecture {arch!r}; use one of {sorted(MOBILENET_V3_TABLES)}")
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    table = MOBILENET_V3_TABLES[arch]
    tail = max(i for i, b in enumerate(table.blocks) if b.stride == 2)
    divider = 2 if reduced_tail else 1

    def scaled(channels: int) -> int:
        return make_divisible(channels * width_mult)

    configs: list[BlockConfig] = []
    in_channels = table.stem
    for i, spec in enumerate(table.blocks):
        in_tail = i >= tail
        out = spec.out // divider if in_tail else spec.out
        expanded = spec.expanded // divider if i > tail else spec.expanded
        configs.append(
            BlockConfig(
                in_channels=scaled(in_channels), kernel=spec.kernel, expanded=scaled(expanded), out=scaled(out),
                se=spec.se, activation=spec.activation, stride=spec.stride, dilation=2 if in_tail and dilated else 1,
            )
        )
        in_channels = out
    return scaled(table.stem), configs, scaled(table.last_channel // divider)


# -- the building blocks ------------------------------------------------------------------------


def _activation(name: str) -> type[nn.Module]:
    if name == "RE":
        return nn.ReLU
    if name == "HS":
        return nn.Hardswish
    raise ValueError(f"unknown activation {name!r}; use 'RE' (ReLU) or 'HS' (hard-swish)")


class ConvNormActivation(nn.Sequential):
    """Convolution (``0``), norm (``1``) and, unless ``activation`` is ``None``, activation (``2``).

    "Same" padding (``(kernel - 1) // 2 * dilation``); the convolution has a bias only
    without a norm. The layout is torchvision's ``Conv2dNormActivation``, so a frozen
    batch norm folds into the convolution before it (:mod:`detkit.backbones.fold`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        norm_layer: NormLayer,
        activation: type[nn.Module] | None,
    ) -> None:
        norm = norm_layer(out_channels)
        padding = (kernel_size - 1) // 2 * dilation
        conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding,
            dilation=dilation, groups=groups, bias=isinstance(norm, nn.Identity),
        )
        layers = [conv, norm] if activation is None else [conv, norm, activation(inplace=True)]
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """Channel attention: ``x * hardsigmoid(fc2(relu(fc1(mean over H, W of x))))``.

    ``(N, C, H, W) -> (N, C, H, W)``; ``fc1``/``fc2`` are 1x1 convolutions ``C -> squeeze -> C``.
    """

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.avgpool(x)  # (N, C, H, W) -> (N, C, 1, 1)
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(scale))))
        return scale * x


class InvertedResidual(nn.Module):
    """MobileNetV3's block: [1x1 expand,] k x k depthwise, [SE,] 1x1 linear projection [+ input].

    ``block`` holds the layers in torchvision's order (the expansion is left out when it
    would not change the channel count); the input is added when the block keeps the
    stride and the channels.

    Attributes:
        out_channels: the block's output channels.
        stride: the table's stride (2 for a downsampling block, also when dilated).
        use_residual: whether the input is added.
    """

    def __init__(self, config: BlockConfig, *, norm_layer: NormLayer) -> None:
        super().__init__()
        if config.stride not in (1, 2):
            raise ValueError(f"an inverted residual block has stride 1 or 2, got {config.stride}")
        activation = _activation(config.activation)
        layers: list[nn.Module] = []
        if config.expanded != config.in_channels:
            layers.append(ConvNormActivation(
                config.in_channels, config.expanded, norm_layer=norm_layer, activation=activation
            ))
        layers.append(ConvNormActivation(
            config.expanded, config.expanded, kernel_size=config.kernel, stride=config.conv_stride,
            dilation=config.dilation, groups=config.expanded, norm_layer=norm_layer, activation=activation,
        ))
        if config.se:
            layers.append(SqueezeExcitation(config.expanded, make_divisible(config.expanded // 4)))
        layers.append(ConvNormActivation(config.expanded, config.out, norm_layer=norm_layer, activation=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = config.out
        self.stride = config.stride
        self.use_residual = config.stride == 1 and config.in_channels == config.out

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


def make_features(stem: int, configs: Sequence[BlockConfig], *, norm_layer: NormLayer) -> nn.Sequential:
    """torchvision's ``features``: the 3x3/2 hard-swish stem, the blocks, and the last 1x1 conv (6x the channels).

    ``(N, 3, H, W) -> (N, 6 * configs[-1].out, ~H/32, ~W/32)`` (``~H/16`` when dilated).
    """
    layers: list[nn.Module] = [
        ConvNormActivation(3, stem, kernel_size=3, stride=2, norm_layer=norm_layer, activation=nn.Hardswish)
    ]
    layers += [InvertedResidual(config, norm_layer=norm_layer) for config in configs]
    last = configs[-1].out
    layers.append(ConvNormActivation(last, 6 * last, norm_layer=norm_layer, activation=nn.Hardswish))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class StageSlice:
    """Stage ``name`` is ``features[start:end]``: ``channels`` output channels at ``stride``."""

    name: str
    start: int
    end: int
    channels: int
    stride: int


def stage_slices(stem: int, configs: Sequence[BlockConfig]) -> list[StageSlice]:
    """Cut ``features`` into ``c1``..``c4``, ``c5_entry`` and ``c5`` (see the module docstring).

    A stage starts at every stride-2 block (``cK`` after the table's stride ``2**K``);
    the last one is split after its first block.
    """
    slices: list[StageSlice] = []
    start, level, stride, channels = 0, 1, 2, stem
    for i, config in enumerate(configs, start=1):  # features[0] is the stem
        if config.stride == 2:
            slices.append(StageSlice(f"c{level}", start, i, channels, stride))
            start, level = i, level + 1
        stride *= config.conv_stride
        channels = config.out
    entry = configs[start - 1]
    slices.append(StageSlice(f"c{level}_entry", start, start + 1, entry.out, stride))
    slices.append(StageSlice(f"c{level}", start + 1, len(configs) + 2, 6 * channels, stride))
    return slices


# -- the network --------------------------------------------------------------------------------

#: The stages :meth:`MobileNetV3.forward` returns by default.
DEFAULT_OUT_FEATURES = ("c2", "c3", "c4", "c5")


class MobileNetV3(ClassifierBackbone):
    """MobileNetV3-Large or -Small as a classifier and as a detection trunk.

    Args:
        arch: ``"large"`` or ``"small"`` (a key of :data:`MOBILENET_V3_TABLES`).
        norm: ``frozen_bn`` (fine-tuning detectors), ``bn`` (training a classifier),
            ``gn`` or ``none``.
        norm_eps: the batch norms' epsilon: 0.001 in torchvision's classifiers, 1e-5 in
            its detection models (whose weights then give their outputs exactly).
        width_mult: scales every channel count (rounded to multiples of 8); torchvision's
            ImageNet weights are for 1.0.
        reduced_tail: halve the channels of the blocks from ``c5_entry`` on.
        dilated: keep stride 16 from ``c5_entry`` on, dilating the depthwise convs by 2.
        dropout: dropout probability before the classifier's last layer.
        frozen_stages: freeze the first k stages of ``c1, c2, c3, c4, c5_entry, c5``
            (3, the default, is torchvision's detection default: ``features.0-6`` of
            Large); frozen batch norms keep their statistics.
        out_features: stages returned by :meth:`forward`, of the six above.
        num_classes: K for a classifier (global average pool, ``classifier``:
            ``Linear``, hard-swish, dropout, ``Linear``); ``None``: trunk only.
        weights: a state-dict file or URL (torchvision's ``mobilenet_v3_*`` format) to
            load, or ``imagenet`` for torchvision's ImageNet weights (downloaded once to
            ``$DETKIT_CACHE``); its classifier is skipped when ``num_classes`` is ``None``.

    Attributes:
        features: torchvision's ``features`` (:func:`make_features`).
        block_configs: the resolved blocks, ``features[1:-1]``.
    """

    def __init__(
        self,
        *,
        arch: str = "large",
        norm: str = "frozen_bn",
        norm_eps: float = 0.001,
        width_mult: float = 1.0,
        reduced_tail: bool = False,
        dilated: bool = False,
        dropout: float = 0.2,
        frozen_stages: int = 3,
        out_features: Sequence[str] = DEFAULT_OUT_FEATURES,
        num_classes: int | None = None,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        stem, configs, last_channel = block_configs(
            arch, width_mult=width_mult, reduced_tail=reduced_tail, dilated=dilated
        )
        self.block_configs = configs
        self.features = make_features(stem, configs, norm_layer=norm_layer(norm, eps=norm_eps))
        self._slices = stage_slices(stem, configs)
        if num_classes is not None:
            last_conv = self._slices[-1].channels
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(
                nn.Linear(last_conv, last_channel),
                nn.Hardswish(inplace=True),
                nn.Dropout(p=dropout, inplace=True),
                nn.Linear(last_channel, num_classes),
            )
        if weights is None:  # a weight file sets every parameter: skip the initialization
            self._init_weights()
        self._setup_trunk(
            stage_channels={s.name: s.channels for s in self._slices},
            out_features=out_features,
            frozen_stages=frozen_stages,
            num_classes=num_classes,
        )
        strides = {s.name: s.stride for s in self._slices}  # dilated stages keep stride 16
        self.out_strides = {k: strides[k] for k in self.out_features}
        if weights is not None:
            self._load_weights(weights)

    def _init_weights(self) -> None:
        # He init (fan-out; torchvision's leaky-ReLU default of slope 0 is the ReLU gain), unit norms,
        # small Gaussian classifier.
        self._init_he_fan_out()

    def stages(self) -> list[tuple[str, nn.Module]]:
        """``(name, features[start:end])`` of ``c1, c2, c3, c4, c5_entry, c5``."""
        return [(s.name, self.features[s.start : s.end]) for s in self._slices]

    def _head(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))  # (N, C, h, w) -> (N, C) -> (N, K)


def _mobilenet_v3_variant(arch: str) -> type[MobileNetV3]:
    class _Variant(MobileNetV3):
        def __init__(
            self,
            *,
            norm: str = "frozen_bn",
            norm_eps: float = 0.001,
            width_mult: float = 1.0,
            reduced_tail: bool = False,
            dilated: bool = False,
            dropout: float = 0.2,
            frozen_stages: int = 3,
            out_features: Sequence[str] = DEFAULT_OUT_FEATURES,
            num_classes: int | None = None,
            weights: str | None = None,
        ) -> None:
            super().__init__(
                arch=arch, norm=norm, norm_eps=norm_eps, width_mult=width_mult, reduced_tail=reduced_tail,
                dilated=dilated, dropout=dropout, frozen_stages=frozen_stages, out_features=out_features,
                num_classes=num_classes, weights=weights,
            )

    _Variant.__name__ = _Variant.__qualname__ = f"MobileNetV3{arch.capitalize()}"
    _Variant.registry_name = f"mobilenet_v3_{arch}"
    _Variant.__doc__ = f"MobileNetV3-{arch.capitalize()}; see :class:`MobileNetV3` for the arguments."
    _Variant.__module__ = __name__
    return _Variant


mobilenet_v3_large = _mobilenet_v3_variant("large")
mobilenet_v3_small = _mobilenet_v3_variant("small")

__all__ = [
    "MOBILENET_V3_TABLES",
    "BlockConfig",
    "BlockSpec",
    "ConvNormActivation",
    "InvertedResidual",
    "MobileNetV3",
    "MobileNetV3Table",
    "SqueezeExcitation",
    "block_configs",
    "make_divisible",
    "make_features",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "norm_layer",
    "stage_slices",
]
