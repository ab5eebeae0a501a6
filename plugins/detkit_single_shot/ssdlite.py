"""SSDlite (Sandler et al., 2018, MobileNetV2 section 6.2) on MobileNetV3-Large (Howard et al., 2019, section 6.3).

SSDlite is SSD with every regular convolution of its extra layers and predictors
replaced by a depthwise-separable one: a 3x3 depthwise convolution (one filter per
channel) followed by a 1x1 convolution that mixes channels, about a ninth of the
multiply-adds of a 3x3 convolution at the same width. The trunk is MobileNetV3-Large
cut where the MobileNetV3 paper cuts it for detection:

* map ``c4`` (stride 16): the output of the 1x1 *expansion* of the C4 block (the first
  block at stride 32), 672 channels, rather than the block's 112-channel input;
* map ``c5`` (stride 32): the trunk's last 1x1 convolution (960 channels, or 480 with
  ``reduced_tail``, which halves the channels of the last three blocks, as the paper's
  Table 6 does for detection);
* four extra blocks (``extra0..3``), each a 1x1 reduction to half the output channels,
  a 3x3 depthwise convolution of stride 2 and a 1x1 expansion (512, 256, 256, 128
  channels), all with batch norm and ReLU6.

The head (:class:`SSDLiteHead`) predicts on the six maps with depthwise-separable 3x3
predictors (depthwise 3x3, batch norm, ReLU6, then a 1x1 convolution), over SSD's
default boxes with ratios 2 and 3 on every map and scales spread linearly from 0.2 to
0.95, centred by map size (no steps); training and decoding are :class:`SSDHead`'s.

Every batch norm uses ``eps=0.001`` and ``momentum=0.03``; without ImageNet weights every
convolution starts from N(0, 0.03) with zero bias. Parameter names follow torchvision's
``ssdlite320_mobilenet_v3_large`` (``features.0``, ``features.1``, ``extra.I`` for the
backbone; ``cls_logits.K`` and ``bbox_deltas.K`` are its head's module lists), so its
state dicts load after renaming the head's two prefixes. The trunk is built from
:mod:`detkit.backbones`' MobileNetV3 blocks (:func:`~detkit.backbones.block_configs`,
:func:`~detkit.backbones.make_features`) with SSDlite's batch norm, then cut inside the
C4 block.

Shape glossary: N images, C channels, H/W input size (320 in SSDlite320), maps ``c4``
(stride 16), ``c5`` (32), ``extra0..3`` (64 to 512 nominally; a 320 px input gives
20, 10, 5, 3, 2 and 1 cells).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from detkit import CheckpointError
from detkit.backbones import (
    MOBILENET_V3_TABLES,
    ConvNormActivation,
    InvertedResidual,
    block_configs,
    make_features,
    norm_layer,
)
from detkit.stages import Backbone
from detkit.structures import FeatureMaps
from detkit.weights import read_state_dict
from detkit_single_shot.ssd import SSDHead

#: torchvision's ImageNet MobileNetV3-Large (full tail), the weights its SSDlite starts from.
IMAGENET_MOBILENET_V3_LARGE = "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth"

#: Batch norm of every SSDlite layer, trunk included (torchvision's ``ssdlite320_mobilenet_v3_large``).
BN_EPS = 0.001
BN_MOMENTUM = 0.03
#: Builds that batch norm for a layer of so many channels.
SSDLITE_NORM = norm_layer("bn", eps=BN_EPS, momentum=BN_MOMENTUM)

#: Index of the C4 block (the first block at stride 32, the last stride-2 one) in
#: MobileNetV3-Large's table (``MOBILENET_V3_TABLES["large"].blocks``); ``features`` has
#: the stem first, so the block is ``features[1 + C4_BLOCK]`` there.
C4_BLOCK = max(i for i, block in enumerate(MOBILENET_V3_TABLES["large"].blocks) if block.stride == 2)
#: SSDlite's extra blocks: output channels at width 1 (each halves the map).
SSDLITE_EXTRA: list[int] = [512, 256, 256, 128]
#: SSDlite320's default boxes: ratios 2 and 3 on each of the six maps.
SSDLITE_ASPECT_RATIOS: list[list[float]] = [[2, 3]] * 6


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    groups: int = 1,
    activation: type[nn.Module] | None = None,
) -> ConvNormActivation:
    """Convolution (no bias, "same" padding), batch norm (SSDlite's eps and momentum), optional activation.

    Children ``0`` (conv), ``1`` (norm), ``2`` (activation), as torchvision's ``Conv2dNormActivation``.
    """
    return ConvNormActivation(
        in_channels, out_channels, kernel_size=kernel_size, stride=stride, groups=groups,
        norm_layer=SSDLITE_NORM, activation=activation,
    )


def depthwise_separable(in_channels: int, out_channels: int) -> nn.Sequential:
    """SSDlite's predictor: 3x3 depthwise conv, batch norm, ReLU6 (child ``0``), then a 1x1 conv with bias (``1``)."""
    return nn.Sequential(
        conv_bn(in_channels, in_channels, 3, groups=in_channels, activation=nn.ReLU6),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
    )


def normal_init(module: nn.Module, std: float = 0.03) -> None:
    """Every convolution of ``module`` from N(0, ``std``) with zero bias (SSDlite's initialization)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def extra_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """An SSDlite extra block: 1x1 to ``out_channels // 2``, 3x3 depthwise of stride 2, 1x1 to ``out_channels``."""
    middle = out_channels // 2
    return nn.Sequential(
        conv_bn(in_channels, middle, 1, activation=nn.ReLU6),
        conv_bn(middle, middle, 3, stride=2, groups=middle, activation=nn.ReLU6),
        conv_bn(middle, out_channels, 1, activation=nn.ReLU6),
    )


class SSDLiteMobileNetV3(Backbone):
    """SSDlite's feature extractor on MobileNetV3-Large (registered as backbone ``ssdlite_mobilenet_v3_large``).

    ``forward(x: Tensor[N, 3, H, W]) -> FeatureMaps`` with maps ``c4``, ``c5``,
    ``extra0..3``, finest first (see the module docstring).

    Args:
        width_mult: MobileNetV3's width multiplier (channels rounded to multiples of 8).
        reduced_tail: halve the channels of the last three blocks and the last conv (what
            torchvision uses when it starts without ImageNet weights).
        extra_channels: output channels of the extra blocks, one per block.
        extra_width_mult: multiplier of ``extra_channels`` (rounded down, at least
            ``min_depth``); torchvision's SSDlite320 keeps 1.0 whatever ``width_mult``.
        min_depth: the fewest channels of an extra block.
        weights: torchvision's MobileNetV3-Large classifier weights (a file or URL, of the
            same ``width_mult`` and ``reduced_tail``), or ``imagenet`` for its ImageNet file
            (width 1, full tail); they fill the trunk, the extra blocks keep their
            initialization. Every convolution first gets N(0, 0.03) (torchvision's
            initialization without a pretrained backbone).
    """

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        reduced_tail: bool = False,
        extra_channels: Sequence[int] = tuple(SSDLITE_EXTRA),
        extra_width_mult: float = 1.0,
        min_depth: int = 16,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if not extra_channels:
            raise ValueError("extra_channels must list at least one extra block")
        self.width_mult, self.reduced_tail = width_mult, reduced_tail
        stem, configs, _ = block_configs("large", width_mult=width_mult, reduced_tail=reduced_tail)
        blocks = list(make_features(stem, configs, norm_layer=SSDLITE_NORM))  # stem, 15 blocks, last 1x1 conv
        c4 = blocks[1 + C4_BLOCK]  # + 1: the stem comes first
        assert isinstance(c4, InvertedResidual)
        expansion, after_expansion = c4.block[0], c4.block[1:]  # slicing keeps the keys (1, 2, 3), as torchvision's
        self.features = nn.Sequential(
            nn.Sequential(*blocks[: 1 + C4_BLOCK], expansion),  # stem to the C4 expansion: stride 16
            nn.Sequential(after_expansion, *blocks[2 + C4_BLOCK :]),  # C4 depthwise to the last conv: stride 32
        )
        last = blocks[-1]
        assert isinstance(last, nn.Sequential) and isinstance(last[0], nn.Conv2d)
        assert isinstance(expansion, nn.Sequential) and isinstance(expansion[0], nn.Conv2d)
        out_channels = [expansion[0].out_channels, last[0].out_channels]
        in_channels = out_channels[-1]
        extra = []
        for channels in extra_channels:
            out = max(min_depth, int(int(channels) * extra_width_mult))
            extra.append(extra_block(in_channels, out))
            out_channels.append(out)
            in_channels = out
        self.extra = nn.ModuleList(extra)
        normal_init(self)
        names = ["c4", "c5", *(f"extra{i}" for i in range(len(extra)))]
        self.out_channels = dict(zip(names, out_channels))
        self.out_strides = {name: 2 ** (4 + i) for i, name in enumerate(names)}
        if weights is not None:
            self.load_mobilenet_v3_large(weights)

    def load_mobilenet_v3_large(self, weights: str) -> None:
        """Fill the trunk from torchvision's MobileNetV3-Large classifier weights (see ``weights``)."""
        source = read_state_dict(IMAGENET_MOBILENET_V3_LARGE if weights == "imagenet" else weights)
        c4 = 1 + C4_BLOCK
        state = {}
        for key, value in source.items():
            prefix, _, rest = key.partition(".")
            index, _, param = rest.partition(".")
            if prefix != "features" or not index.isdigit():
                continue  # the classifier has no counterpart
            i = int(index)
            if i < c4:
                name = f"features.0.{i}.{param}"
            elif i > c4:
                name = f"features.1.{i - c4}.{param}"
            elif param.startswith("block.0."):
                name = f"features.0.{c4}.{param.removeprefix('block.0.')}"  # the C4 expansion
            else:
                name = f"features.1.0.{param.removeprefix('block.')}"  # the rest of the C4 block
            state[name] = value
        own = self.state_dict()
        bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
               if k not in own or own[k].shape != v.shape]
        if bad or not state:
            raise CheckpointError(
                f"weight file {weights!r} is not MobileNetV3-Large weights for this trunk (width_mult "
                f"{self.width_mult}, reduced_tail {self.reduced_tail}; torchvision's ImageNet file has 1.0 and false): "
                + ("; ".join(bad[:4]) if bad else "it has no features.N tensors")
            )
        self.load_state_dict(state, strict=False)

    def forward(self, x: Tensor) -> FeatureMaps:
        maps: dict[str, Tensor] = {}
        names = iter(self.out_channels)
        for block in [*self.features, *self.extra]:
            x = block(x)
            maps[next(names)] = x
        return FeatureMaps(maps, dict(self.out_strides))


class SSDLiteHead(SSDHead):
    """SSDlite's depthwise-separable predictors on every feature map, with its default boxes.

    :class:`SSDHead` with each 3x3 predictor replaced by :func:`depthwise_separable`
    (N(0, 0.03) convolutions, zero biases) and SSDlite320's defaults: ratios 2 and 3 on six
    maps, linear scales 0.2 to 0.95 without steps, 300 candidates per class. Losses
    ``loss_ssdlite_cls`` and ``loss_ssdlite_box``; arguments as :class:`SSDHead`'s.
    """

    loss_prefix = "loss_ssdlite"

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        num_classes: int,
        aspect_ratios: Sequence[Sequence[float]] = tuple(SSDLITE_ASPECT_RATIOS),
        scales: Sequence[float] | None = None,
        min_ratio: float = 0.2,
        max_ratio: float = 0.95,
        steps: Sequence[int] | None = None,
        clip: bool = True,
        iou_thresh: float = 0.5,
        neg_to_pos_ratio: float = 3.0,
        box_coder_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        topk_candidates: int = 300,
    ) -> None:
        super().__init__(
            in_channels=in_channels, num_classes=num_classes, aspect_ratios=aspect_ratios, scales=scales,
            min_ratio=min_ratio, max_ratio=max_ratio, steps=steps, clip=clip, iou_thresh=iou_thresh,
            neg_to_pos_ratio=neg_to_pos_ratio, box_coder_weights=box_coder_weights, topk_candidates=topk_candidates,
        )

    @staticmethod
    def _predictor(in_channels: int, out_channels: int) -> nn.Module:
        return depthwise_separable(in_channels, out_channels)

    def _init_predictors(self) -> None:
        normal_init(self)


__all__ = [
    "BN_EPS",
    "BN_MOMENTUM",
    "C4_BLOCK",
    "IMAGENET_MOBILENET_V3_LARGE",
    "SSDLITE_ASPECT_RATIOS",
    "SSDLITE_EXTRA",
    "SSDLITE_NORM",
    "SSDLiteHead",
    "SSDLiteMobileNetV3",
    "conv_bn",
    "depthwise_separable",
    "extra_block",
    "normal_init",
]
