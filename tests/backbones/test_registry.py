"""Backbones by name: every built-in is listed and built through the plugin registry, like a third party's."""

from __future__ import annotations

import sys
from textwrap import dedent

import pytest
import torch
from torch import nn

import detkit.backbones.registry as backbone_registry
from detkit import ConfigError, PluginError
from detkit.backbones import VGG, LeNet5, build_backbone, list_backbones
from detkit.plugins import load_plugins

BUILTIN_BACKBONES = [
    "lenet5",
    "alexnet",
    *[f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")],
    "googlenet",
    *[f"resnet{d}" for d in (18, 34, 50, 101, 152)],
]

PLUGIN_SOURCE = """
    from torch import nn

    import detkit
    from detkit.stages import Backbone
    from detkit.structures import FeatureMaps


    class TinyNet(Backbone):
        def __init__(self, *, width: int = 4, num_classes: int | None = None) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
            self.fc = nn.Linear(width, num_classes) if num_classes is not None else None
            self.out_channels = {"c1": width}
            self.out_strides = {"c1": 2}

        def forward(self, x):
            return FeatureMaps({"c1": self.conv(x)}, dict(self.out_strides))

        def classify(self, x):
            return self.fc(self.conv(x).mean((2, 3)))


    class BareTrunk(TinyNet):
        def __init__(self, *, width: int = 4) -> None:
            super().__init__(width=width)


    @detkit.hookimpl
    def detkit_add_components(registry):
        registry.register("backbone", "tiny_net", TinyNet)
        registry.register("backbone", "bare_trunk", BareTrunk)
"""


@pytest.fixture
def tiny_plugin(tmp_path, monkeypatch) -> str:
    """An importable plugin module registering backbones ``tiny_net`` and ``bare_trunk``."""
    module = "detkit_test_tiny_backbones"
    (tmp_path / f"{module}.py").write_text(dedent(PLUGIN_SOURCE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module
    sys.modules.pop(module, None)


def test_list_backbones_includes_every_builtin_sorted():
    names = list_backbones()
    assert set(BUILTIN_BACKBONES) <= set(names)
    assert names == sorted(names)


def test_build_backbone_with_classes_and_options():
    torch.manual_seed(0)
    model = build_backbone("vgg16", num_classes=3)
    assert isinstance(model, VGG) and type(model).__name__ == "VGG16" and model.num_classes == 3
    with torch.no_grad():
        assert model.eval().classify(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    lenet = build_backbone("lenet5", num_classes=10, activation="tanh", frozen_stages=1)
    assert isinstance(lenet, LeNet5) and isinstance(lenet.act, nn.Tanh)
    assert not lenet.conv1.weight.requires_grad and lenet.conv2.weight.requires_grad
    assert build_backbone("alexnet").num_classes is None  # a trunk by default


def test_unknown_backbone_suggests_the_nearest_name_and_lists_all():
    with pytest.raises(PluginError, match=r"unknown backbone 'vgg16bn' \(did you mean 'vgg16_bn'\?\)") as info:
        build_backbone("vgg16bn")
    assert all(name in str(info.value) for name in BUILTIN_BACKBONES)
    with pytest.raises(PluginError, match="did you mean 'resnet50'"):
        build_backbone("resnet_50")


def test_unknown_argument_suggests_the_nearest_one():
    with pytest.raises(ConfigError, match=r"unknown key 'frozen_stage' .*did you mean 'frozen_stages'"):
        build_backbone("alexnet", frozen_stage=1)


def test_a_plugin_backbone_is_listed_and_built_like_a_builtin(tiny_plugin):
    plugins = load_plugins([tiny_plugin])
    names = list_backbones(plugins)
    assert {"tiny_net", "bare_trunk"} <= set(names) and set(BUILTIN_BACKBONES) <= set(names)
    assert plugins.registry.get("backbone", "tiny_net").plugin == tiny_plugin
    # By module name too (loaded like ``-p module``), but not without it.
    assert "tiny_net" in list_backbones([tiny_plugin])
    assert "tiny_net" not in list_backbones()

    model = build_backbone("tiny_net", num_classes=5, width=8, plugins=plugins)
    x = torch.randn(2, 3, 16, 16)
    assert model.classify(x).shape == (2, 5)
    assert model(x)["c1"].shape == (2, 8, 8, 8) and model.out_strides == {"c1": 2}
    assert build_backbone("tiny_net", plugins=plugins).fc is None

    # A backbone without a classifier head: built as a trunk; asking for classes is an error.
    assert build_backbone("bare_trunk", plugins=plugins).out_channels == {"c1": 4}
    with pytest.raises(ConfigError, match="unknown key 'num_classes' for backbone 'bare_trunk'"):
        build_backbone("bare_trunk", num_classes=3, plugins=plugins)
    with pytest.raises(PluginError, match="did you mean 'tiny_net'"):
        build_backbone("tiny_nett", plugins=plugins)


def test_loaded_plugins_are_cached(monkeypatch):
    calls: list[tuple[str, ...]] = []

    def counting_load_plugins(extra=()):
        calls.append(tuple(extra))
        return load_plugins(extra)

    monkeypatch.setattr(backbone_registry, "load_plugins", counting_load_plugins)
    backbone_registry._loaded_plugins.cache_clear()
    try:
        list_backbones()
        list_backbones(None)
        build_backbone("lenet5")
        assert calls == [()]
    finally:
        backbone_registry._loaded_plugins.cache_clear()
