"""The classification backbone library's common ground: one base class and one registry.

:class:`ClassifierBackbone` is what LeNet-5, AlexNet, VGG, GoogLeNet, ResNet and MobileNetV3 share: a
trunk cut into named stages that is both a detection backbone (``forward`` ->
:class:`~detkit.structures.FeatureMaps`) and, with a head, a classifier
(``classify`` -> logits), with the first stages freezable for transfer learning.

:func:`list_backbones` and :func:`build_backbone` look backbones up by name in the
plugin registry (kind ``"backbone"``), so one registered by a third-party plugin is
listed and built exactly like detkit's own.

Stage names: ``cK`` is the deepest feature map at stride ``2**K`` (the last one
before the next downsampling), so ``c2..c5`` of every backbone can feed
:class:`~detkit.backbones.FPN`.

Shape glossary: N images, C channels, H/W input size, K classes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from detkit.errors import ConfigError
from detkit.plugins import Plugins, load_plugins
from detkit.stages.base import Backbone
from detkit.structures import FeatureMaps

_TORCHVISION = "https://download.pytorch.org/models/"

#: torchvision's ImageNet classification weights of each registered backbone: ``weights: imagenet``.
IMAGENET_WEIGHTS: dict[str, str] = {
    name: _TORCHVISION + file
    for name, file in {
        "alexnet": "alexnet-owt-7be5be79.pth",
        "googlenet": "googlenet-1378be20.pth",
        "mobilenet_v3_large": "mobilenet_v3_large-8738ca79.pth",
        "mobilenet_v3_small": "mobilenet_v3_small-047dcff4.pth",
        "resnet18": "resnet18-f37072fd.pth",
        "resnet34": "resnet34-b627a593.pth",
        "resnet50": "resnet50-0676ba61.pth",
        "resnet101": "resnet101-63fe2227.pth",
        "resnet152": "resnet152-394f9c45.pth",
        "vgg11": "vgg11-8a719046.pth",
        "vgg11_bn": "vgg11_bn-6002323d.pth",
        "vgg13": "vgg13-19584684.pth",
        "vgg13_bn": "vgg13_bn-abd245e5.pth",
        "vgg16": "vgg16-397923af.pth",
        "vgg16_bn": "vgg16_bn-6c64b313.pth",
        "vgg19": "vgg19-dcbb9e9d.pth",
        "vgg19_bn": "vgg19_bn-c79401a0.pth",
    }.items()
}


def weights_file(weights: str, backbone: str) -> str:
    """The file or URL a backbone's ``weights`` names: ``imagenet`` is torchvision's ImageNet file of ``backbone``.

    Raises:
        ConfigError: ``imagenet`` for a backbone torchvision has no weights of.
    """
    if weights != "imagenet":
        return weights
    if backbone not in IMAGENET_WEIGHTS:
        raise ConfigError(
            f"model.backbone.weights: there are no ImageNet weights for {backbone!r}; "
            f"those of {', '.join(sorted(IMAGENET_WEIGHTS))} are torchvision's, or give a weight file"
        )
    return IMAGENET_WEIGHTS[backbone]


def stage_stride(name: str) -> int:
    """The stride of stage ``cK``, or of a map ``cK_NAME`` taken inside it: ``2**K``."""
    return 2 ** int(name[1:].partition("_")[0])


class ClassifierBackbone(Backbone):
    """A classifier whose trunk is a sequence of named stages.

    Subclasses build their layers (with torchvision's parameter names), then call
    :meth:`_setup_trunk`, and implement :meth:`stages` and :meth:`_head`; they may
    override :meth:`_prepare_input` (input normalization or resizing).

    Attributes:
        out_features: the stage names :meth:`forward` returns, finest first.
        out_channels: stage name -> channels, for every returned stage.
        out_strides: stage name -> stride in input pixels.
        num_classes: K, or ``None`` for a trunk without a classification head.
        frozen_stages: how many leading stages (of :meth:`stages`) are frozen.
    """

    out_features: tuple[str, ...]
    num_classes: int | None
    frozen_stages: int
    #: the registry name whose torchvision ImageNet weights ``weights: imagenet`` loads
    registry_name: str = ""

    # -- to implement ----------------------------------------------------------------
    def stages(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` of every stage, in order; applying them in turn to the
        (prepared) input gives each stage's output."""
        raise NotImplementedError

    def _head(self, x: Tensor) -> Tensor:
        """Output of the last stage ``(N, C, h, w)`` -> ``(N, K)`` logits."""
        raise NotImplementedError

    def _prepare_input(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W)`` -> what the first stage takes (identity by default)."""
        return x

    # -- shared machinery ----------------------------------------------------------------
    def _init_he_fan_out(self) -> None:
        """torchvision's VGG and MobileNetV3 initialization: He normal (fan-out, ReLU gain)
        convolutions, unit norms, N(0, 0.01) linear layers, zero biases (He et al., 2015)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def _load_weights(self, path: str) -> None:
        """Load a state-dict file in torchvision's layout (a head-less model skips the file's head)."""
        from detkit.weights import load_weights_file

        load_weights_file(self, weights_file(path, self.registry_name), strict=self.num_classes is not None)

    def _setup_trunk(
        self,
        *,
        stage_channels: Mapping[str, int],
        out_features: Sequence[str],
        frozen_stages: int,
        num_classes: int | None,
    ) -> None:
        """Record the returned stages, their channels and strides, and freeze stages.

        Args:
            stage_channels: every stage name (in order) -> its output channels.
            out_features: the stages :meth:`forward` returns.
            frozen_stages: freeze this many leading stages (0 freezes nothing).
            num_classes: K, or ``None`` when the model has no classification head.
        """
        name = type(self).__name__
        if not out_features:
            raise ValueError(f"{name}: out_features is empty; stages are {tuple(stage_channels)}")
        unknown = [k for k in out_features if k not in stage_channels]
        if unknown:
            raise ValueError(f"unknown {name} stages {unknown}; stages are {tuple(stage_channels)}")
        if not 0 <= frozen_stages <= len(stage_channels):
            raise ValueError(
                f"{name}: frozen_stages must be between 0 and {len(stage_channels)} "
                f"(the number of stages {tuple(stage_channels)}), got {frozen_stages}"
            )
        # Finest first, whatever order the caller listed them in.
        order = list(stage_channels)
        self.out_features = tuple(sorted(set(out_features), key=order.index))
        self.out_channels = {k: stage_channels[k] for k in self.out_features}
        self.out_strides = {k: stage_stride(k) for k in self.out_features}
        self.num_classes = num_classes
        self.frozen_stages = frozen_stages
        for _, module in self.stages()[:frozen_stages]:
            for p in module.parameters():
                p.requires_grad_(False)
        self.train(self.training)  # frozen stages start in eval mode

    def train(self, mode: bool = True) -> ClassifierBackbone:
        """Set training mode, keeping frozen stages in eval mode.

        A frozen stage is frozen entirely: its batch-norm statistics stay fixed too.
        """
        super().train(mode)
        if getattr(self, "frozen_stages", 0):
            for _, module in self.stages()[: self.frozen_stages]:
                module.eval()
        return self

    def forward(self, x: Tensor) -> FeatureMaps:
        """``(N, C_in, H, W)`` -> FeatureMaps of :attr:`out_features` (``cK``: ``(N, C_k, ~H/2**K, ~W/2**K)``)."""
        x = self._prepare_input(x)
        maps: dict[str, Tensor] = {}
        last = self.out_features[-1]
        for name, stage in self.stages():
            x = stage(x)
            if name in self.out_channels:
                maps[name] = x
            if name == last:
                break
        return FeatureMaps(maps, dict(self.out_strides))

    def classify(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W)`` -> ``(N, K)`` logits."""
        if self.num_classes is None:
            raise RuntimeError(f"this {type(self).__name__} was built without a classifier (num_classes=None)")
        x = self._prepare_input(x)
        for _, stage in self.stages():
            x = stage(x)
        return self._head(x)


# -- the registry -----------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _loaded_plugins(extra: tuple[str, ...]) -> Plugins:
    return load_plugins(extra)


def _resolve(plugins: Plugins | Sequence[str] | None) -> Plugins:
    if isinstance(plugins, Plugins):
        return plugins
    return _loaded_plugins(tuple(plugins or ()))


def list_backbones(plugins: Plugins | Sequence[str] | None = None) -> list[str]:
    """Names of every registered backbone, sorted.

    Args:
        plugins: loaded plugins to look in; or module names to load as extra plugins
            (like ``-p module``) besides the built-in and installed ones; ``None``: the
            built-in and installed plugins. Loaded plugins are cached per module list.
    """
    return _resolve(plugins).registry.names("backbone")


def build_backbone(
    name: str,
    *,
    num_classes: int | None = None,
    plugins: Plugins | Sequence[str] | None = None,
    **kwargs: Any,
) -> Backbone:
    """Build the backbone registered as ``name``.

    Args:
        name: a name from :func:`list_backbones` (``"vgg16"``, ``"resnet50"``, ...).
        num_classes: K to add a classification head; ``None`` for a trunk only.
        plugins: where to look, as for :func:`list_backbones`.
        kwargs: the backbone's keyword arguments (``weights``, ``frozen_stages``,
            ``out_features``, ...).

    Returns:
        The backbone: ``forward(x) -> FeatureMaps`` with ``out_channels`` and ``out_strides``,
        and ``classify(x) -> (N, K)`` logits when built with ``num_classes``.

    Raises:
        PluginError: unknown name (the message suggests the nearest and lists all).
        ConfigError: an argument the backbone does not take, or a bad value.
    """
    spec: dict[str, Any] = {"name": name, **kwargs}
    extra: dict[str, Any] = {}
    if num_classes is None:
        extra["num_classes"] = None  # passed only to factories that take it
    else:
        spec["num_classes"] = num_classes  # a factory without a head is an error
    return _resolve(plugins).registry.build("backbone", spec, **extra)


__all__ = ["ClassifierBackbone", "build_backbone", "list_backbones", "stage_stride"]
