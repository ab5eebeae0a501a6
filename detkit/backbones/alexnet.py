"""AlexNet (Krizhevsky et al., 2012), in torchvision's single-tower layout.

torchvision's variant follows "One weird trick" (Krizhevsky, 2014): 64-192-384-256-256
channels, no local response normalization, one GPU. Parameter names follow
torchvision's ``alexnet`` (``features.N``, ``avgpool``, ``classifier.1/4/6``), so its
state dicts load directly.

Shape glossary: N images, C channels, H/W input size, K classes. Stages (``cK`` at
stride ``2**K``; pools are 3x3 stride 2 without padding, so sizes round down):
``c2`` conv1 ``(N, 64, ~H/4, ~W/4)``, ``c3`` conv2 ``(N, 192, ...)``, ``c4``
conv3-5 ``(N, 256, ...)``, ``c5`` pool5 ``(N, 256, ...)``; a 64x64 input gives
15, 7, 3 and 1 pixels per side.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detkit.backbones.registry import ClassifierBackbone
from detkit.backbones.vgg import ConvSpec, LayerSpec, PoolSpec, make_features

#: The architecture table: convs (channels, kernel, stride, padding) and 3x3/2 overlapping pools.
ALEXNET_TABLE: list[LayerSpec] = [
    ConvSpec(64, 11, 4, 2),
    PoolSpec(3, 2),
    ConvSpec(192, 5, 1, 2),
    PoolSpec(3, 2),
    ConvSpec(384, 3, 1, 1),
    ConvSpec(256, 3, 1, 1),
    ConvSpec(256, 3, 1, 1),
    PoolSpec(3, 2),
]

STAGE_NAMES = ("c2", "c3", "c4", "c5")


class AlexNet(ClassifierBackbone):
    """AlexNet as a classifier and as a detection trunk.

    Args:
        dropout: dropout probability before each hidden fully connected layer.
        frozen_stages: freeze the first k stages of ``c2..c5``.
        out_features: stages returned by :meth:`forward`.
        num_classes: K for a classifier (``avgpool`` to 6x6, ``classifier``:
            4096-4096-K); ``None``: trunk only.
        weights: a state-dict file or URL (torchvision's ``alexnet`` format) to load, or ``imagenet`` for
            torchvision's ImageNet weights (downloaded once to ``$DETKIT_CACHE``);
            its classifier is skipped when ``num_classes`` is ``None``.
    """

    registry_name = "alexnet"

    def __init__(
        self,
        *,
        dropout: float = 0.5,
        frozen_stages: int = 0,
        out_features: Sequence[str] = STAGE_NAMES,
        num_classes: int | None = None,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        self.features, self._slices = make_features(ALEXNET_TABLE)
        if num_classes is not None:
            channels = self._slices[-1].channels
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(channels * 6 * 6, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Linear(4096, num_classes),
            )
        self._setup_trunk(
            stage_channels={s.name: s.channels for s in self._slices},
            out_features=out_features,
            frozen_stages=frozen_stages,
            num_classes=num_classes,
        )
        if weights is not None:
            self._load_weights(weights)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """``c2``: conv1; ``c3``: pool1, conv2; ``c4``: pool2, conv3-5; ``c5``: pool5."""
        return [(s.name, self.features[s.start : s.end]) for s in self._slices]

    def _head(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (N, 256, h, w) -> (N, 256*6*6)
        return self.classifier(x)


__all__ = ["ALEXNET_TABLE", "AlexNet"]
