"""The CSP-Darknet backbone of YOLOv8 (registered as backbone ``csp_darknet``).

A Conv-BN-SiLU stem at stride 2, then four stages, each a strided 3x3
:class:`~detkit_yolo.layers.ConvNormAct` followed by a :class:`~detkit_yolo.layers.C2f`
block (residual bottlenecks); the last stage ends with :class:`~detkit_yolo.layers.SPPF`.
Stage ``cK`` is the output at stride ``2**K`` (detkit's backbone naming), so ``c3, c4, c5``
feed the :class:`~detkit_yolo.neck.PAN` neck at strides 8, 16 and 32.

The architecture is the table :data:`CSP_DARKNET`, scaled by two multipliers as YOLOv5/v8
scale their model sizes (:data:`SIZES`): ``width`` multiplies every channel count (after
capping it at ``max_channels``; rounded up to a multiple of 8) and ``depth`` every number of
bottlenecks (rounded, at least 1).

Shape glossary: N images, H/W input size, C_k channels of stage ``ck``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from detkit.stages import Backbone
from detkit.structures import FeatureMaps
from detkit.weights import load_weights_file
from detkit_yolo.layers import SPPF, C2f, ConvNormAct

#: ``(stage, channels, bottlenecks)`` at width and depth 1; ``c1`` is the stem (no C2f).
CSP_DARKNET: tuple[tuple[str, int, int], ...] = (
    ("c1", 64, 0),
    ("c2", 128, 3),
    ("c3", 256, 6),
    ("c4", 512, 6),
    ("c5", 1024, 3),
)

#: YOLOv8's model sizes: ``size -> (depth, width, max_channels)``.
SIZES: dict[str, tuple[float, float, int]] = {
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "m": (0.67, 0.75, 768),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.25, 512),
}


def scaled_channels(channels: int, width: float, max_channels: int) -> int:
    """``min(channels, max_channels) * width``, rounded up to a multiple of 8."""
    return int(math.ceil(min(channels, max_channels) * width / 8) * 8)


def scaled_depth(blocks: int, depth: float) -> int:
    """``blocks * depth`` rounded, at least 1 (0 stays 0)."""
    return max(round(blocks * depth), 1) if blocks > 0 else 0


class CSPDarknet(Backbone):
    """YOLOv8's backbone: ``forward(x (N, 3, H, W)) -> FeatureMaps`` of :attr:`out_features`.

    Stages: ``c1`` the stem (3x3 conv, stride 2); ``c2..c5`` a 3x3 stride-2 conv and a
    C2f block each; ``c5`` ends with SPPF.

    Args:
        size: a YOLOv8 size (``n``, ``s``, ``m``, ``l``, ``x``) giving ``depth``, ``width``
            and ``max_channels``; any of those set explicitly wins over the size's.
        depth: multiplier of the number of bottlenecks of every C2f block.
        width: multiplier of every channel count.
        max_channels: channel cap applied before ``width``.
        norm: ``bn`` (training from scratch) or ``frozen_bn`` (fixed statistics, folded into
            the convolutions at inference).
        frozen_stages: freeze the first k stages of ``c1..c5`` (0 trains everything); frozen
            stages stay in eval mode, so their batch-norm statistics do not move either.
        out_features: the stages :meth:`forward` returns, of ``c1..c5``.
        weights: a state-dict file or URL of this backbone to load.

    Attributes:
        out_features: the returned stage names, finest first.
        out_channels: stage name -> channels.
        out_strides: stage name -> stride.
    """

    def __init__(
        self,
        *,
        size: str = "n",
        depth: float | None = None,
        width: float | None = None,
        max_channels: int | None = None,
        norm: str = "bn",
        frozen_stages: int = 0,
        out_features: Sequence[str] = ("c3", "c4", "c5"),
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; use one of {', '.join(SIZES)} (or set depth and width)")
        preset_depth, preset_width, preset_max = SIZES[size]
        depth = preset_depth if depth is None else depth
        width = preset_width if width is None else width
        max_channels = preset_max if max_channels is None else max_channels
        if depth <= 0 or width <= 0:
            raise ValueError(f"depth and width must be > 0, got depth {depth} and width {width}")
        names = [name for name, _, _ in CSP_DARKNET]
        unknown = [k for k in out_features if k not in names]
        if not out_features or unknown:
            raise ValueError(f"out_features must name some of the stages {names}, got {list(out_features)}")
        if not 0 <= frozen_stages <= len(names):
            raise ValueError(f"frozen_stages must be between 0 and {len(names)}, got {frozen_stages}")

        self.stages = nn.ModuleDict()
        stage_channels: dict[str, int] = {}
        in_channels = 3
        for name, base_channels, base_blocks in CSP_DARKNET:
            channels = scaled_channels(base_channels, width, max_channels)
            layers: list[nn.Module] = [ConvNormAct(in_channels, channels, 3, 2, norm=norm)]
            if base_blocks:
                layers.append(C2f(channels, channels, num_blocks=scaled_depth(base_blocks, depth), norm=norm))
            if name == "c5":
                layers.append(SPPF(channels, channels, norm=norm))
            self.stages[name] = nn.Sequential(*layers)
            stage_channels[name] = in_channels = channels

        self.out_features = tuple(sorted(set(out_features), key=names.index))
        self.out_channels = {k: stage_channels[k] for k in self.out_features}
        self.out_strides = {k: 2 ** int(k[1:]) for k in self.out_features}
        self.frozen_stages = frozen_stages
        for stage in list(self.stages.values())[:frozen_stages]:
            for p in stage.parameters():
                p.requires_grad_(False)
        self.train(self.training)
        if weights is not None:
            load_weights_file(self, weights)

    def train(self, mode: bool = True) -> CSPDarknet:
        """Set training mode, keeping the frozen stages in eval mode (fixed batch-norm statistics)."""
        super().train(mode)
        for stage in list(self.stages.values())[: self.frozen_stages]:
            stage.eval()
        return self

    def forward(self, x: Tensor) -> FeatureMaps:
        """``(N, 3, H, W)`` -> ``{ck: (N, C_k, H / 2**k, W / 2**k)}`` for ``ck`` in :attr:`out_features`."""
        maps: dict[str, Tensor] = {}
        for name, stage in self.stages.items():
            x = stage(x)
            if name in self.out_channels:
                maps[name] = x
            if name == self.out_features[-1]:
                break
        return FeatureMaps(maps, dict(self.out_strides))


__all__ = ["CSP_DARKNET", "SIZES", "CSPDarknet", "scaled_channels", "scaled_depth"]
