"""Feature Pyramid Network (Lin et al., 2017).

Lateral 1x1 convolutions bring every backbone stage to ``out_channels``; a top-down
path adds each coarser map, upsampled (nearest) to the finer one; a 3x3
convolution smooths every sum. An extra level ``p(last+1)`` is a stride-2
subsampling of the coarsest output (the "max pool" top block of the paper's RPN);
RetinaNet and FCOS (Lin et al., 2017; Tian et al., 2019) add two instead, each a
stride-2 3x3 convolution, with a ReLU between them (torchvision's ``LastLevelP6P7``
on P5).

Input ``cK`` (stride 2**K) becomes output ``pK`` of the same stride; a map ``cK_NAME``
taken inside a stage becomes ``pK_NAME``, so that two inputs of one stride keep apart
(MobileNetV3's ``c5_entry`` and ``c5``, the two stride-32 maps of torchvision's mobile
FPN, give ``p5_entry`` and ``p5``; the top-down step between them adds without resizing).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from detkit.backbones.norm import make_norm
from detkit.errors import ConfigError
from detkit.stages.base import Neck
from detkit.structures import FeatureMaps


class FPN(Neck):
    """Top-down feature pyramid.

    Args:
        in_channels: backbone stage name -> channels, finest first.
        in_strides: backbone stage name -> stride.
        out_channels: channels of every pyramid level.
        extra_level: coarser levels above the last: ``true`` (or ``pool``) adds ``p(K+1)`` by
            stride-2 subsampling of the coarsest output; ``p6p7`` adds ``p(K+1)`` and
            ``p(K+2)`` by two stride-2 3x3 convolutions on it, ReLU between (RetinaNet,
            FCOS); ``false`` (or ``none``) adds nothing.
        norm: normalization after every conv (``none`` as in the paper; ``bn`` or
            ``gn`` help when training from scratch).
    """

    def __init__(
        self,
        *,
        in_channels: dict[str, int],
        in_strides: dict[str, int],
        out_channels: int = 256,
        extra_level: bool | str = True,
        norm: str = "none",
    ) -> None:
        super().__init__()
        self.in_features = list(in_channels)
        self.lateral_convs = nn.ModuleList(
            _conv(in_channels[k], out_channels, 1, norm) for k in self.in_features
        )
        self.output_convs = nn.ModuleList(_conv(out_channels, out_channels, 3, norm) for _ in self.in_features)
        levels = [int(math.log2(in_strides[k])) for k in self.in_features]
        self.out_names = [_level_name(k, lvl) for k, lvl in zip(self.in_features, levels)]
        if len(set(self.out_names)) < len(self.out_names):
            raise ValueError(
                f"FPN inputs {self.in_features} (strides {[in_strides[k] for k in self.in_features]}) give the "
                f"levels {self.out_names}: inputs of one stride need names cK_NAME (a map inside stage cK)"
            )
        self.extra_level = _extra_level_kind(extra_level)
        #: the convolutions of ``p6p7`` (empty otherwise)
        self.extra_convs = nn.ModuleList()
        if self.extra_level == "p6p7":
            self.extra_convs.extend(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(2))
        for _ in range({"none": 0, "pool": 1, "p6p7": 2}[self.extra_level]):
            self.out_names.append(f"p{levels[-1] + 1}")
            levels.append(levels[-1] + 1)
        self.out_channels = {name: out_channels for name in self.out_names}
        self.out_strides = {name: 2**lvl for name, lvl in zip(self.out_names, levels)}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: FeatureMaps) -> FeatureMaps:
        inputs = [features[k] for k in self.in_features]
        top_down = self.lateral_convs[-1](inputs[-1])
        outputs = [self.output_convs[-1](top_down)]
        for idx in range(len(inputs) - 2, -1, -1):
            lateral = self.lateral_convs[idx](inputs[idx])
            top_down = lateral + F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")
            outputs.insert(0, self.output_convs[idx](top_down))
        if self.extra_level == "pool":
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        elif self.extra_level == "p6p7":
            outputs.append(self.extra_convs[0](outputs[-1]))
            outputs.append(self.extra_convs[1](F.relu(outputs[-1])))
        return FeatureMaps(dict(zip(self.out_names, outputs)), dict(self.out_strides))


def _extra_level_kind(extra_level: bool | str) -> str:
    """``extra_level`` as one of ``none``, ``pool``, ``p6p7`` (booleans: ``pool`` or ``none``)."""
    if isinstance(extra_level, bool):
        return "pool" if extra_level else "none"
    if extra_level not in ("none", "pool", "p6p7"):
        raise ConfigError(
            f"model.neck.extra_level: unknown value {extra_level!r}; use true or pool (a max-pooled level), "
            "p6p7 (two stride-2 convolutions, RetinaNet/FCOS) or false"
        )
    return extra_level


def _conv(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> nn.Module:
    """A conv, followed by a norm layer unless ``norm == "none"`` (then the conv has a bias)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm == "none")
    return conv if norm == "none" else nn.Sequential(conv, make_norm(norm, out_channels))


def _level_name(input_name: str, level: int) -> str:
    """``pK`` for an input at stride ``2**K``; ``pK_NAME`` for an input named ``cJ_NAME``."""
    stage, _, tap = input_name.partition("_")
    if tap and stage[:1] == "c" and stage[1:].isdigit():
        return f"p{level}_{tap}"
    return f"p{level}"
