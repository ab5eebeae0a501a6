"""The building blocks of the CSP-Darknet backbone and the PAN neck (YOLOv5 / YOLOv8 family).

* :class:`ConvNormAct`: a k x k convolution without bias, batch norm and SiLU, the one
  layer every block is made of (YOLOv5/v8's ``Conv``). Its batch norm uses YOLO's
  settings (``eps`` 1e-3, momentum 0.03); ``norm: frozen_bn`` fixes it
  (:class:`detkit.backbones.FrozenBatchNorm2d`, which detkit folds into the convolution at
  inference).
* :class:`Bottleneck`: two 3x3 :class:`ConvNormAct`, with a residual connection.
* :class:`C2f`: YOLOv8's cross-stage-partial block (CSPNet, Wang et al., 2020): a 1x1
  convolution splits the input into two halves; n bottlenecks run in sequence on the
  second half, and the two halves and every bottleneck's output are concatenated and
  mixed by a last 1x1 convolution. Only part of the channels flow through the deep path,
  and the gradient reaches each bottleneck by a short route.
* :class:`SPPF`: fast spatial pyramid pooling (YOLOv5): three 5x5 stride-1 max pools in
  sequence (receptive fields 5, 9 and 13), concatenated with their input.

Shape glossary: N images, C channels, H/W map size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.backbones import FrozenBatchNorm2d

#: The normalizations a layer may use (``norm`` arguments).
NORMS: tuple[str, ...] = ("bn", "frozen_bn")

#: YOLOv5/v8's batch-norm settings.
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def make_norm(norm: str, channels: int) -> nn.Module:
    """``bn`` (trained) or ``frozen_bn`` (detkit.backbones' :class:`FrozenBatchNorm2d`), with YOLO's eps."""
    if norm == "bn":
        return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(channels, eps=BN_EPS)
    raise ValueError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")


class ConvNormAct(nn.Module):
    """``(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)``: conv (no bias), norm, SiLU.

    The children are registered in that order, so detkit's BN folding finds the
    convolution directly followed by its norm.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, *, norm: str = "bn"
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.norm = make_norm(norm, out_channels)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 :class:`ConvNormAct` at ``channels``, plus the input when ``shortcut``."""

    def __init__(self, channels: int, *, shortcut: bool = True, norm: str = "bn") -> None:
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels, 3, norm=norm)
        self.conv2 = ConvNormAct(channels, channels, 3, norm=norm)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """YOLOv8's CSP block: ``(N, C_in, H, W) -> (N, C_out, H, W)``.

    A 1x1 convolution to ``2 h`` channels (``h = C_out / 2``) split into halves; the
    second half goes through ``num_blocks`` bottlenecks in turn; the two halves and
    every bottleneck output, ``(2 + n) h`` channels in all, are mixed by a 1x1 convolution.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, num_blocks: int = 1, shortcut: bool = True, norm: str = "bn"
    ) -> None:
        super().__init__()
        hidden = out_channels // 2
        self.conv1 = ConvNormAct(in_channels, 2 * hidden, 1, norm=norm)
        self.blocks = nn.ModuleList(Bottleneck(hidden, shortcut=shortcut, norm=norm) for _ in range(num_blocks))
        self.conv2 = ConvNormAct((2 + num_blocks) * hidden, out_channels, 1, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        parts = list(self.conv1(x).chunk(2, dim=1))  # (N, 2h, H, W) -> 2 x (N, h, H, W)
        for block in self.blocks:
            parts.append(block(parts[-1]))
        return self.conv2(torch.cat(parts, dim=1))  # (N, (2 + n) h, H, W) -> (N, C_out, H, W)


class SPPF(nn.Module):
    """Fast spatial pyramid pooling: ``(N, C_in, H, W) -> (N, C_out, H, W)``.

    A 1x1 convolution halves the channels; three ``pool_size`` max pools (stride 1) in
    sequence give the pooled maps of growing windows; the four are concatenated and a
    1x1 convolution mixes them.
    """

    def __init__(self, in_channels: int, out_channels: int, *, pool_size: int = 5, norm: str = "bn") -> None:
        super().__init__()
        hidden = in_channels // 2
        self.conv1 = ConvNormAct(in_channels, hidden, 1, norm=norm)
        self.conv2 = ConvNormAct(4 * hidden, out_channels, 1, norm=norm)
        self.pool_size = pool_size

    def forward(self, x: Tensor) -> Tensor:
        pooled = [self.conv1(x)]
        for _ in range(3):
            pooled.append(F.max_pool2d(pooled[-1], self.pool_size, stride=1, padding=self.pool_size // 2))
        return self.conv2(torch.cat(pooled, dim=1))  # (N, 4 * C_in / 2, H, W) -> (N, C_out, H, W)


__all__ = ["NORMS", "SPPF", "Bottleneck", "C2f", "ConvNormAct", "FrozenBatchNorm2d", "make_norm"]
