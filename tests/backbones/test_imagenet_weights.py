"""model.backbone.weights: torchvision's ImageNet files (by name or URL) for every registered backbone."""

from __future__ import annotations

import pytest
import torch
import torchvision

import detkit.weights
from detkit.backbones.registry import IMAGENET_WEIGHTS, build_backbone, list_backbones, weights_file
from detkit.errors import CheckpointError, ConfigError
from detkit.plugins import load_plugins

#: torchvision's own weight enums, the oracle for the URLs
TORCHVISION_ENUMS = {
    "alexnet": torchvision.models.AlexNet_Weights, "googlenet": torchvision.models.GoogLeNet_Weights,
    "resnet18": torchvision.models.ResNet18_Weights, "resnet34": torchvision.models.ResNet34_Weights,
    "resnet50": torchvision.models.ResNet50_Weights, "resnet101": torchvision.models.ResNet101_Weights,
    "resnet152": torchvision.models.ResNet152_Weights, "vgg11": torchvision.models.VGG11_Weights,
    "vgg11_bn": torchvision.models.VGG11_BN_Weights, "vgg13": torchvision.models.VGG13_Weights,
    "vgg13_bn": torchvision.models.VGG13_BN_Weights, "vgg16": torchvision.models.VGG16_Weights,
    "vgg16_bn": torchvision.models.VGG16_BN_Weights, "vgg19": torchvision.models.VGG19_Weights,
    "vgg19_bn": torchvision.models.VGG19_BN_Weights,
    "mobilenet_v3_large": torchvision.models.MobileNet_V3_Large_Weights,
    "mobilenet_v3_small": torchvision.models.MobileNet_V3_Small_Weights,
}


def test_every_torchvision_backbone_names_torchvisions_imagenet_url():
    assert set(IMAGENET_WEIGHTS) == set(TORCHVISION_ENUMS)
    for name, enum in TORCHVISION_ENUMS.items():
        assert weights_file("imagenet", name) == enum.IMAGENET1K_V1.url
    assert weights_file("my/file.pth", "resnet18") == "my/file.pth"
    # no torchvision classifier (lenet5, csp_darknet), or a detector trunk that reads its classifier's file itself
    own = {"lenet5", "csp_darknet", "ssd300_vgg16", "ssdlite_mobilenet_v3_large"}
    uncovered = set(list_backbones()) - set(IMAGENET_WEIGHTS) - own
    assert not uncovered, f"backbones without ImageNet weights: {uncovered}"


def test_imagenet_is_read_from_the_download_cache(tmp_path, monkeypatch):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()  # seeded random stand-in for the real file
    torch.save(reference.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    monkeypatch.setattr(detkit.weights, "CACHE_DIR", tmp_path)  # already downloaded: no network needed
    ours = build_backbone("resnet18", weights="imagenet", num_classes=1000, norm="bn", frozen_stages=0).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.classify(x), reference(x))


def test_imagenet_weights_of_a_backbone_torchvision_has_none_of():
    with pytest.raises(ConfigError, match=r"no ImageNet weights for 'lenet5'"):
        build_backbone("lenet5", weights="imagenet")


def test_an_unreachable_url_says_to_use_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setattr(detkit.weights, "CACHE_DIR", tmp_path)
    with pytest.raises(CheckpointError, match=r"cannot download https://nowhere.invalid/r18.pth: .* local path"):
        build_backbone("resnet18", weights="https://nowhere.invalid/r18.pth")


def test_ssd_trunk_takes_torchvisions_vgg16_weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).eval()
    torch.save(vgg.state_dict(), tmp_path / "vgg16_features-amdegroot-88682ab5.pth")
    monkeypatch.setattr(detkit.weights, "CACHE_DIR", tmp_path)
    registry = load_plugins().registry
    trunk = registry.build("backbone", {"name": "ssd300_vgg16", "weights": "imagenet"}, key="model.backbone").eval()
    x = torch.rand(1, 3, 64, 64)  # even sizes at every pool: SSD's rounding-up pool3 changes nothing
    with torch.no_grad():
        torch.testing.assert_close(trunk.features(x), vgg.features[:23](x))  # conv1_1 .. conv4_3 with its ReLU
    assert torch.equal(trunk.extra[0][1].weight, vgg.features[24].weight)  # conv5_1 .. conv5_3 follow pool4
    assert torch.equal(trunk.extra[0][5].bias, vgg.features[28].bias)
    with pytest.raises(Exception, match="width 64 only"):
        registry.build("backbone", {"name": "ssd300_vgg16", "width": 16, "weights": "imagenet"}, key="model.backbone")
