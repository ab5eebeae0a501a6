"""YOLOv8's PAN-FPN neck (registered as neck ``pan``).

Path aggregation (PANet, Liu et al., 2018) on a feature pyramid: a top-down path
(FPN, Lin et al., 2017) carries the coarse maps' semantics down, then a bottom-up
path carries the fine maps' localization back up. YOLOv8's version fuses by
concatenation followed by a :class:`~detkit_yolo.layers.C2f` block (without residual
bottlenecks) rather than by addition:

* top-down, from the coarsest input down: ``t_L = c_L``;
  ``t_l = C2f(concat(upsample_2x(t_{l+1}), c_l))`` with ``c_l``'s channels;
* bottom-up, from the finest up: ``p_1 = t_1``;
  ``p_l = C2f(concat(conv_3x3_stride_2(p_{l-1}), t_l))`` with ``c_l``'s channels.

Input ``cK`` (stride ``2**K``) becomes output ``pK`` with the same channels and stride.

Shape glossary: N images, L levels (finest first), C_l channels and H_l/W_l size of level l.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from detkit.stages import Neck
from detkit.structures import FeatureMaps
from detkit_yolo.layers import C2f, ConvNormAct


class PAN(Neck):
    """``forward(FeatureMaps {c_l: (N, C_l, H_l, W_l)}) -> FeatureMaps {p_l: (N, C_l, H_l, W_l)}``.

    Args:
        in_channels: backbone stage name -> channels, finest first (passed by detkit);
            two levels at least, each at twice the previous stride.
        in_strides: backbone stage name -> stride (passed by detkit).
        num_blocks: bottlenecks of every C2f block (YOLOv8: 3 x the model's depth
            multiplier, rounded: 1 for sizes n and s).
        norm: ``bn`` or ``frozen_bn``, as the backbone's.
    """

    def __init__(
        self,
        *,
        in_channels: dict[str, int],
        in_strides: dict[str, int],
        num_blocks: int = 1,
        norm: str = "bn",
    ) -> None:
        super().__init__()
        self.in_features = list(in_channels)
        if len(self.in_features) < 2:
            raise ValueError(f"the PAN neck needs two feature maps at least, got {self.in_features}")
        strides = [in_strides[k] for k in self.in_features]
        if any(b != 2 * a for a, b in itertools.pairwise(strides)):
            raise ValueError(f"the PAN neck needs maps at doubling strides, got {dict(in_strides)}")
        channels = [in_channels[k] for k in self.in_features]
        # top_down[l] fuses level l with the upsampled level l + 1 (the coarsest level has none)
        self.top_down = nn.ModuleList(
            C2f(channels[i] + channels[i + 1], channels[i], num_blocks=num_blocks, shortcut=False, norm=norm)
            for i in range(len(channels) - 1)
        )
        # downsample[l - 1] and bottom_up[l - 1] bring level l - 1 up to level l (the finest has none)
        self.downsample = nn.ModuleList(
            ConvNormAct(channels[i - 1], channels[i - 1], 3, 2, norm=norm) for i in range(1, len(channels))
        )
        self.bottom_up = nn.ModuleList(
            C2f(channels[i - 1] + channels[i], channels[i], num_blocks=num_blocks, shortcut=False, norm=norm)
            for i in range(1, len(channels))
        )
        self.out_names = [f"p{int(math.log2(s))}" for s in strides]
        self.out_channels = dict(zip(self.out_names, channels))
        self.out_strides = dict(zip(self.out_names, strides))

    def forward(self, features: FeatureMaps) -> FeatureMaps:
        inputs = [features[k] for k in self.in_features]
        top_down = [inputs[-1]]
        for level in range(len(inputs) - 2, -1, -1):
            coarse = F.interpolate(top_down[0], size=inputs[level].shape[-2:], mode="nearest")  # (N, C_l+1, H_l, W_l)
            top_down.insert(0, self.top_down[level](torch.cat([coarse, inputs[level]], dim=1)))
        outputs = [top_down[0]]
        for level in range(1, len(inputs)):
            finer = self.downsample[level - 1](outputs[-1])  # (N, C_l-1, H_l-1, W_l-1) -> (N, C_l-1, H_l, W_l)
            outputs.append(self.bottom_up[level - 1](torch.cat([finer, top_down[level]], dim=1)))
        return FeatureMaps(dict(zip(self.out_names, outputs)), dict(self.out_strides))


__all__ = ["PAN"]
