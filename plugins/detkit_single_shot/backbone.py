"""SSD's VGG-16 trunk (Liu et al., 2016): VGG-16 to conv4_3, then fc6/fc7 as convolutions and extra layers.

The changes to VGG-16: pool3 rounds up (``ceil_mode``) so that a 300 px input gives
a 38x38 conv4_3; conv4_3's output is L2-normalized per position and rescaled by a
learnable per-channel weight (initially 20) because its norm is much larger than the
deeper maps'; pool5 is 3x3 stride 1, fc6 a 3x3 convolution dilated by 6 and fc7 a 1x1
convolution; then extra blocks (1x1 reduction, 3x3 convolution) halve the map
each. Parameter names follow torchvision's ``SSDFeatureExtractorVGG`` (``features``,
``scale_weight``, ``extra.I``) so its state dicts load by prefix.

Shape glossary: N images, C channels, H/W input size; maps ``conv4_3`` (stride 8),
``fc7`` (16) and ``extra0..`` (32, 64, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit import CheckpointError
from detkit.stages import Backbone
from detkit.structures import FeatureMaps
from detkit.weights import read_state_dict

#: torchvision's ImageNet VGG-16 features, the weights its ``ssd300_vgg16`` starts from.
IMAGENET_VGG16_FEATURES = "https://download.pytorch.org/models/vgg16_features-amdegroot-88682ab5.pth"

#: VGG-16 up to conv4_3 (with its ReLU), at width 64: ``int`` a 3x3 conv, ``"M"`` a 2x2
#: max pool, ``"C"`` a 2x2 max pool that rounds up.
TRUNK_TABLE: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512]
#: conv5_x, after pool4 (torchvision's ``extra.0.0`` to ``extra.0.6``).
CONV5_TABLE: list[int | str] = ["M", 512, 512, 512]
#: SSD300's extra blocks: ``(reduced channels, out channels, kernel, stride, padding)``.
SSD300_EXTRA: list[tuple[int, int, int, int, int]] = [
    (256, 512, 3, 2, 1),  # conv8_2
    (128, 256, 3, 2, 1),  # conv9_2
    (128, 256, 3, 1, 0),  # conv10_2
    (128, 256, 3, 1, 0),  # conv11_2
]


def _layers(table: Sequence[int | str], in_channels: int, scale: float) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    for entry in table:
        if entry in ("M", "C"):
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=entry == "C"))
        else:
            out = max(1, int(int(entry) * scale))
            layers += [nn.Conv2d(in_channels, out, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = out
    return layers, in_channels


class SSDVGG(Backbone):
    """The SSD feature extractor on VGG-16.

    ``forward(x: Tensor[N, 3, H, W]) -> FeatureMaps`` with maps ``conv4_3`` (L2-normalized
    and scaled), ``fc7``, ``extra0``, ``extra1``, ..., finest first.

    Args:
        width: channels of the first conv (64 in VGG-16); every layer scales with it.
        extra_layers: the extra blocks, ``(reduced, out, kernel, stride, padding)`` at
            width 64 (default: SSD300's four; fewer suit small images).
        l2_scale: initial value of conv4_3's per-channel scale.
        weights: a torchvision VGG-16 state dict (a file or URL: the classifier's, or the
            ``vgg16_features`` file torchvision's SSD starts from), or ``imagenet`` for the
            latter; it fills conv1_1 to conv5_3 (``features.0-28``), and fc6, fc7 and the
            extra layers keep their initialization (as in torchvision's SSD).
    """

    def __init__(
        self,
        *,
        width: int = 64,
        extra_layers: Sequence[Sequence[int]] = tuple(SSD300_EXTRA),
        l2_scale: float = 20.0,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        scale = width / 64.0
        trunk, channels = _layers(TRUNK_TABLE, 3, scale)
        self.features = nn.Sequential(*trunk)
        self.scale_weight = nn.Parameter(torch.full((channels,), float(l2_scale)))
        conv5, _ = _layers(CONV5_TABLE, channels, scale)
        fc_channels = max(1, int(1024 * scale))
        fc = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),  # pool5: keeps the resolution
            nn.Conv2d(channels, fc_channels, kernel_size=3, padding=6, dilation=6),  # fc6, atrous
            nn.ReLU(inplace=True),
            nn.Conv2d(fc_channels, fc_channels, kernel_size=1),  # fc7
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = [nn.Sequential(*conv5, fc)]
        names, strides = ["conv4_3", "fc7"], [8, 16]
        out_channels = [channels, fc_channels]
        in_channels = fc_channels
        for i, spec in enumerate(extra_layers):
            reduced, out, kernel, stride, padding = (int(v) for v in spec)
            reduced, out = max(1, int(reduced * scale)), max(1, int(out * scale))
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, reduced, kernel_size=1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(reduced, out, kernel_size=kernel, stride=stride, padding=padding),
                    nn.ReLU(inplace=True),
                )
            )
            names.append(f"extra{i}")
            strides.append(strides[-1] * 2)
            out_channels.append(out)
            in_channels = out
        self.extra = nn.ModuleList(blocks)
        self._init_weights()
        self.out_channels = dict(zip(names, out_channels))
        self.out_strides = dict(zip(names, strides))
        if weights is not None:
            self.load_vgg16(weights)

    def load_vgg16(self, weights: str) -> None:
        """Fill the VGG-16 layers from torchvision's VGG-16 weights (see ``weights``)."""
        source = read_state_dict(IMAGENET_VGG16_FEATURES if weights == "imagenet" else weights)
        state = {}
        for key, value in source.items():
            prefix, _, rest = key.partition(".")
            index, _, param = rest.partition(".")
            if prefix != "features" or not index.isdigit():
                continue  # the classifier's fully connected layers have no counterpart
            # features.0-22 (to conv4_3) are ours; conv5_x (24, 26, 28) follow pool4 in extra.0
            i = int(index)
            name = f"features.{i}" if i <= 22 else f"extra.0.{i - 23}" if i <= 29 else None
            if name is not None:
                state[f"{name}.{param}"] = value
        own = self.state_dict()
        bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
               if k not in own or own[k].shape != v.shape]
        if bad or not state:
            raise CheckpointError(
                f"weight file {weights!r} is not VGG-16 weights for this trunk (width 64 only): "
                + ("; ".join(bad[:4]) if bad else "it has no features.N tensors")
            )
        self.load_state_dict(state, strict=False)

    def _init_weights(self) -> None:
        # VGG's He init for the trunk; Xavier for the SSD additions, as the paper's code.
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.extra.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> FeatureMaps:
        x = self.features(x)
        # L2-normalize every position over channels, then learn a per-channel scale
        maps = {"conv4_3": self.scale_weight.view(1, -1, 1, 1) * F.normalize(x)}
        for name, block in zip(list(self.out_channels)[1:], self.extra):
            x = block(x)
            maps[name] = x
        return FeatureMaps(maps, dict(self.out_strides))


__all__ = ["SSD300_EXTRA", "SSDVGG"]
