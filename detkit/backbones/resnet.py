"""ResNet (He et al., 2016) as a classifier and as a detection backbone.

Parameter names follow torchvision's ``resnet*`` (``conv1``, ``bn1``,
``layer1.0.conv1``, ``downsample.0``, ``fc``), so its state dicts load directly.
Bottlenecks put the stride on the 3x3 convolution ("ResNet v1.5").

Shape glossary: N images, C channels, H/W spatial size; stage ``cK`` has stride 2**K.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from detkit.backbones.norm import ConvNorm, FrozenBatchNorm2d, conv_then_norm, make_norm
from detkit.backbones.registry import ClassifierBackbone


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or projection) shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, *, stride: int, norm: str) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, width)
        self.conv2 = nn.Conv2d(width, out_channels, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(conv_then_norm(self.conv1, self.bn1, x))
        out = conv_then_norm(self.conv2, self.bn2, out)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), with a shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, *, stride: int, norm: str) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = make_norm(norm, width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = make_norm(norm, width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(conv_then_norm(self.conv1, self.bn1, x))
        out = self.relu(conv_then_norm(self.conv2, self.bn2, out))
        out = conv_then_norm(self.conv3, self.bn3, out)
        return self.relu(out + identity)


def _projection(in_channels: int, out_channels: int, stride: int, norm: str) -> ConvNorm | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return ConvNorm(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), make_norm(norm, out_channels))


@dataclass(frozen=True)
class ResNetSpec:
    """One ResNet depth: its block type and the number of blocks per stage."""

    block: type[BasicBlock] | type[Bottleneck]
    blocks_per_stage: tuple[int, int, int, int]


#: The architecture table: depth -> blocks of stages c2..c5.
RESNET_SPECS: dict[int, ResNetSpec] = {
    18: ResNetSpec(BasicBlock, (2, 2, 2, 2)),
    34: ResNetSpec(BasicBlock, (3, 4, 6, 3)),
    50: ResNetSpec(Bottleneck, (3, 4, 6, 3)),
    101: ResNetSpec(Bottleneck, (3, 4, 23, 3)),
    152: ResNetSpec(Bottleneck, (3, 8, 36, 3)),
}

#: The stages :meth:`ResNet.forward` returns by default.
STAGE_NAMES = ("c2", "c3", "c4", "c5")


class ResNet(ClassifierBackbone):
    """ResNet backbone returning named stages, with an optional classification head.

    Stages: ``c1`` is the stem's 7x7 convolution, norm and ReLU (stride 2); ``c2`` the
    max pool and ``layer1``; ``c3..c5`` are ``layer2..layer4``.

    Args:
        depth: 18, 34, 50, 101 or 152.
        norm: ``frozen_bn`` (fine-tuning detectors), ``bn`` (training from scratch),
            ``gn`` or ``none``.
        width: channels of the first stage (64 in the paper); smaller values give
            a slimmer network with the same depth, for CPU recipes.
        frozen_stages: freeze the first k stages of ``c1..c5``: 0 trains everything;
            1 freezes the stem; ``k`` > 1 freezes the stem and stages c2..c(k).
            Frozen batch norms keep their statistics.
        out_features: stage names returned by :meth:`forward`, of ``c1..c5``.
        num_classes: add global pooling and a linear classifier (``fc``) with this
            many outputs, used by :meth:`classify`.
        weights: a state-dict file or URL (torchvision's ``resnet*`` format) to load, or ``imagenet`` for
            torchvision's ImageNet weights (downloaded once to ``$DETKIT_CACHE``).
    """

    # Added by name in __init__ (``layer{i}``, torchvision's keys).
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        *,
        depth: int = 50,
        norm: str = "frozen_bn",
        width: int = 64,
        frozen_stages: int = 2,
        out_features: Sequence[str] = STAGE_NAMES,
        num_classes: int | None = None,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth}")
        spec = RESNET_SPECS[depth]
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = make_norm(norm, width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = width
        channels: dict[str, int] = {"c1": width}
        for i, num_blocks in enumerate(spec.blocks_per_stage):
            stage_width = width * 2**i
            blocks = []
            for b in range(num_blocks):
                stride = 2 if (b == 0 and i > 0) else 1
                blocks.append(spec.block(in_channels, stage_width, stride=stride, norm=norm))
                in_channels = stage_width * spec.block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            channels[STAGE_NAMES[i]] = in_channels
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(in_channels, num_classes)
        self._init_weights()
        self._setup_trunk(
            stage_channels=channels,
            out_features=out_features,
            frozen_stages=frozen_stages,
            num_classes=num_classes,
        )
        if weights is not None:
            self._load_weights(weights)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """``c1``: conv1, bn1, ReLU; ``c2``: max pool, layer1; ``c3..c5``: layer2..layer4."""
        return [
            ("c1", nn.Sequential(self.conv1, self.bn1, self.relu)),
            ("c2", nn.Sequential(self.maxpool, self.layer1)),
            ("c3", self.layer2),
            ("c4", self.layer3),
            ("c5", self.layer4),
        ]

    def _head(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (N, C, h, w) -> (N, C) -> (N, K)


def _resnet_factory(depth: int) -> type[ResNet]:
    class _Depth(ResNet):
        def __init__(
            self,
            *,
            norm: str = "frozen_bn",
            width: int = 64,
            frozen_stages: int = 2,
            out_features: Sequence[str] = STAGE_NAMES,
            num_classes: int | None = None,
            weights: str | None = None,
        ) -> None:
            super().__init__(
                depth=depth, norm=norm, width=width, frozen_stages=frozen_stages,
                out_features=out_features, num_classes=num_classes, weights=weights,
            )

    _Depth.__name__ = _Depth.__qualname__ = f"ResNet{depth}"
    _Depth.registry_name = f"resnet{depth}"
    _Depth.__doc__ = f"ResNet-{depth}; see :class:`ResNet` for the arguments."
    return _Depth


resnet18 = _resnet_factory(18)
resnet34 = _resnet_factory(34)
resnet50 = _resnet_factory(50)
resnet101 = _resnet_factory(101)
resnet152 = _resnet_factory(152)

__all__ = ["RESNET_SPECS", "FrozenBatchNorm2d", "ResNet", "resnet18", "resnet34", "resnet50"]
