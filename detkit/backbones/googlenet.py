"""GoogLeNet / Inception v1 (Szegedy et al., 2015), in torchvision's layout.

Parameter names follow torchvision's ``googlenet`` (``conv1..conv3``,
``inception3a..inception5b`` with ``branch1..branch4``, ``aux1``/``aux2``, ``fc``), so
its state dicts load directly, with or without the auxiliary classifiers. Like
torchvision (whose ported weights have that shape) every convolution is followed by
batch norm, and the "5x5" branch uses a 3x3 kernel; the auxiliary heads pool to 4x4
adaptively instead of the paper's 5x5/3 average pool.

Shape glossary: N images, C channels, H/W input size, K classes. Stages (``cK`` at
stride ``2**K``; pools round up): ``c1`` conv1 ``(N, 64, H/2, W/2)``, ``c2`` conv3
``(N, 192, H/4, W/4)``, ``c3`` inception3b ``(N, 480, H/8, W/8)``, ``c4`` inception4e
``(N, 832, H/16, W/16)``, ``c5`` inception5b ``(N, 1024, H/32, W/32)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.backbones.registry import ClassifierBackbone, weights_file


@dataclass(frozen=True)
class InceptionSpec:
    """Output channels of an Inception module's four branches (and the branch reductions)."""

    ch1x1: int
    ch3x3_reduce: int
    ch3x3: int
    ch5x5_reduce: int
    ch5x5: int
    pool_proj: int

    @property
    def out_channels(self) -> int:
        """Channels of the concatenated output."""
        return self.ch1x1 + self.ch3x3 + self.ch5x5 + self.pool_proj


#: The architecture table (the paper's Table 1), in order.
INCEPTION_SPECS: dict[str, InceptionSpec] = {
    "inception3a": InceptionSpec(64, 96, 128, 16, 32, 32),
    "inception3b": InceptionSpec(128, 128, 192, 32, 96, 64),
    "inception4a": InceptionSpec(192, 96, 208, 16, 48, 64),
    "inception4b": InceptionSpec(160, 112, 224, 24, 64, 64),
    "inception4c": InceptionSpec(128, 128, 256, 24, 64, 64),
    "inception4d": InceptionSpec(112, 144, 288, 32, 64, 64),
    "inception4e": InceptionSpec(256, 160, 320, 32, 128, 128),
    "inception5a": InceptionSpec(256, 160, 320, 32, 128, 128),
    "inception5b": InceptionSpec(384, 192, 384, 48, 128, 128),
}

#: Stage name -> the modules it runs, in order.
STAGE_LAYOUT: dict[str, tuple[str, ...]] = {
    "c1": ("conv1",),
    "c2": ("maxpool1", "conv2", "conv3"),
    "c3": ("maxpool2", "inception3a", "inception3b"),
    "c4": ("maxpool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e"),
    "c5": ("maxpool4", "inception5a", "inception5b"),
}
DEFAULT_OUT_FEATURES = ("c2", "c3", "c4", "c5")

# torchvision's ``transform_input``: ImageNet-normalized input -> the (x - 0.5) / 0.5
# normalization the original (ported) weights were trained with.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class GoogLeNetOutputs(NamedTuple):
    """What :meth:`GoogLeNet.classify` returns in training mode (torchvision's field order).

    Attributes:
        logits: ``(N, K)`` of the main head.
        aux_logits2: ``(N, K)`` of ``aux2`` (after inception4d).
        aux_logits1: ``(N, K)`` of ``aux1`` (after inception4a).
    """

    logits: Tensor
    aux_logits2: Tensor
    aux_logits1: Tensor

    def loss(self, targets: Tensor, *, aux_weight: float = 0.3) -> Tensor:
        """Cross-entropy of the main head plus ``aux_weight`` (the paper's 0.3) times each auxiliary one.

        Args:
            targets: ``(N,)`` class indices.
        """
        main = F.cross_entropy(self.logits, targets)
        aux = F.cross_entropy(self.aux_logits1, targets) + F.cross_entropy(self.aux_logits2, targets)
        return main + aux_weight * aux


class BasicConv2d(nn.Module):
    """Convolution (no bias), batch norm (eps 1e-3, as the ported weights), ReLU.

    ``(N, C_in, H, W)`` -> ``(N, C_out, H', W')``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel_size: int, stride: int = 1, padding: int = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Four parallel branches (1x1; 1x1-3x3; 1x1-"5x5"; 3x3 max pool-1x1), concatenated.

    ``(N, C_in, H, W)`` -> ``(N, spec.out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, spec: InceptionSpec) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, spec.ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, spec.ch3x3_reduce, kernel_size=1),
            BasicConv2d(spec.ch3x3_reduce, spec.ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, spec.ch5x5_reduce, kernel_size=1),
            BasicConv2d(spec.ch5x5_reduce, spec.ch5x5, kernel_size=3, padding=1),  # 3x3, as torchvision
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, spec.pool_proj, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: ``(N, C_in, h, w)`` -> pool 4x4 -> 1x1 conv 128 -> fc 1024 -> fc K."""

    def __init__(self, in_channels: int, num_classes: int, *, dropout: float) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))
        x = torch.flatten(x, 1)  # (N, 128, 4, 4) -> (N, 2048)
        x = self.dropout(F.relu(self.fc1(x), inplace=True))
        return self.fc2(x)


class GoogLeNet(ClassifierBackbone):
    """GoogLeNet (Inception v1) as a classifier and as a detection trunk.

    :meth:`classify` returns ``(N, K)`` logits, except in training mode with
    ``aux_logits``: then it returns :class:`GoogLeNetOutputs` ``(logits,
    aux_logits2, aux_logits1)`` as torchvision does (:meth:`GoogLeNetOutputs.loss`
    combines them). :meth:`forward` (the trunk) never runs the auxiliary heads.

    Args:
        aux_logits: with ``num_classes``, add the auxiliary classifiers ``aux1``
            (after inception4a) and ``aux2`` (after inception4d), used in training only.
        transform_input: re-normalize ImageNet-normalized inputs to the ``(x - 0.5) / 0.5``
            scheme of the original weights (torchvision's flag, True for its pretrained model).
        dropout: dropout probability before ``fc``.
        dropout_aux: dropout probability inside the auxiliary heads.
        frozen_stages: freeze the first k stages of ``c1..c5``; frozen batch norms keep
            their statistics.
        out_features: stages returned by :meth:`forward`, of ``c1..c5``.
        num_classes: K for a classifier (global average pool, ``fc``); ``None``: trunk only.
        weights: a state-dict file or URL (torchvision's ``googlenet`` format, with or
            without ``aux1``/``aux2``) to load, or ``imagenet`` for torchvision's ImageNet
            weights. Auxiliary weights the file lacks keep their initialization; those
            the model lacks are skipped.
    """

    aux1: InceptionAux | None
    aux2: InceptionAux | None

    registry_name = "googlenet"

    def __init__(
        self,
        *,
        aux_logits: bool = True,
        transform_input: bool = False,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
        frozen_stages: int = 0,
        out_features: Sequence[str] = DEFAULT_OUT_FEATURES,
        num_classes: int | None = None,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        self.transform_input = transform_input
        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        channels = {"conv1": 64, "conv3": 192}
        in_channels = 192
        for name, spec in INCEPTION_SPECS.items():
            self.add_module(name, Inception(in_channels, spec))
            channels[name] = in_channels = spec.out_channels
        self.aux1 = self.aux2 = None
        if aux_logits and num_classes is not None:
            self.aux1 = InceptionAux(channels["inception4a"], num_classes, dropout=dropout_aux)
            self.aux2 = InceptionAux(channels["inception4d"], num_classes, dropout=dropout_aux)
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(in_channels, num_classes)
        self._init_weights()
        stage_channels = {}
        for stage, names in STAGE_LAYOUT.items():
            stage_channels[stage] = next(channels[n] for n in reversed(names) if n in channels)
        self._setup_trunk(
            stage_channels=stage_channels,
            out_features=out_features,
            frozen_stages=frozen_stages,
            num_classes=num_classes,
        )
        if weights is not None:
            self._load_weights(weights)

    @property
    def aux_logits(self) -> bool:
        """Whether the model has auxiliary classifiers."""
        return self.aux1 is not None

    def _init_weights(self) -> None:
        # Small Gaussian weights (torchvision truncates at +-2, i.e. 200 std: never), unit batch norms.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _load_weights(self, path: str) -> None:
        from detkit.weights import load_weights_file, read_state_dict

        path = weights_file(path, self.registry_name)
        file_has_aux = any(k.startswith(("aux1.", "aux2.")) for k in read_state_dict(path))
        if self.aux_logits and file_has_aux:
            load_weights_file(self, path, strict=True)
            return
        # Load everything but the auxiliary heads, through a view that lacks them.
        without_aux = nn.Module()
        for name, child in self.named_children():
            if name not in ("aux1", "aux2"):
                without_aux.add_module(name, child)
        load_weights_file(without_aux, path, strict=self.num_classes is not None and not file_has_aux)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` of ``c1..c5``; see :data:`STAGE_LAYOUT`."""
        return [(stage, nn.Sequential(*(getattr(self, n) for n in names))) for stage, names in STAGE_LAYOUT.items()]

    def _prepare_input(self, x: Tensor) -> Tensor:
        if not self.transform_input:
            return x
        mean = torch.tensor(_IMAGENET_MEAN, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
        # x = (img - mean) / std  ->  (img - 0.5) / 0.5 = x * std / 0.5 + (mean - 0.5) / 0.5
        return x * (std / 0.5) + (mean - 0.5) / 0.5

    def _head(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (N, 1024, h, w) -> (N, 1024)
        return self.fc(self.dropout(x))

    def classify(self, x: Tensor) -> Tensor | GoogLeNetOutputs:  # type: ignore[override]
        """``(N, 3, H, W)`` -> ``(N, K)`` logits; :class:`GoogLeNetOutputs` in training with aux heads."""
        if self.num_classes is None:
            raise RuntimeError("this GoogLeNet was built without a classifier (num_classes=None)")
        # The auxiliary heads tap the trunk after inception4a and inception4d, in training only.
        taps = {"inception4a": self.aux1, "inception4d": self.aux2} if self.training else {}
        aux: list[Tensor] = []
        x = self._prepare_input(x)
        for names in STAGE_LAYOUT.values():
            for name in names:
                x = getattr(self, name)(x)
                head = taps.get(name)
                if head is not None:
                    aux.append(head(x))
        logits = self._head(x)
        if len(aux) == 2:
            return GoogLeNetOutputs(logits, aux_logits2=aux[1], aux_logits1=aux[0])
        return logits


__all__ = ["INCEPTION_SPECS", "GoogLeNet", "GoogLeNetOutputs", "InceptionSpec"]
