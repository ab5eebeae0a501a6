"""Classification backbones usable as detection backbones, and necks (FPN).

Every backbone is registered under kind ``"backbone"`` by the built-in plugin;
:func:`list_backbones` and :func:`build_backbone` look them up by name.
"""

from detkit.backbones.alexnet import AlexNet
from detkit.backbones.fpn import FPN
from detkit.backbones.googlenet import GoogLeNet, GoogLeNetOutputs
from detkit.backbones.lenet import LeNet5
from detkit.backbones.mobilenet import MobileNetV3, mobilenet_v3_large, mobilenet_v3_small
from detkit.backbones.norm import FrozenBatchNorm2d, make_norm
from detkit.backbones.registry import ClassifierBackbone, build_backbone, list_backbones
from detkit.backbones.resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from detkit.backbones.vgg import (
    VGG,
    VGG_VARIANTS,
    vgg11,
    vgg11_bn,
    vgg13,
    vgg13_bn,
    vgg16,
    vgg16_bn,
    vgg19,
    vgg19_bn,
)

__all__ = [
    "FPN",
    "VGG",
    "VGG_VARIANTS",
    "AlexNet",
    "ClassifierBackbone",
    "FrozenBatchNorm2d",
    "GoogLeNet",
    "GoogLeNetOutputs",
    "LeNet5",
    "MobileNetV3",
    "ResNet",
    "build_backbone",
    "list_backbones",
    "make_norm",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
]
