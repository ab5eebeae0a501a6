"""Classification backbones usable as detection backbones, and necks (FPN).

Every backbone is registered under kind ``"backbone"`` by the built-in plugin;
:func:`list_backbones` and :func:`build_backbone` look them up by name.

A public module (:data:`detkit.PUBLIC_MODULES`): plugins import what is listed here,
including MobileNetV3's building blocks (:func:`block_configs`, :func:`make_features`,
:class:`InvertedResidual` and the rest) for detectors that cut its trunk their own way.
"""

from detkit.backbones.alexnet import AlexNet
from detkit.backbones.fpn import FPN
from detkit.backbones.googlenet import GoogLeNet, GoogLeNetOutputs
from detkit.backbones.lenet import LeNet5
from detkit.backbones.mobilenet import (
    MOBILENET_V3_TABLES,
    BlockConfig,
    BlockSpec,
    ConvNormActivation,
    InvertedResidual,
    MobileNetV3,
    MobileNetV3Table,
    SqueezeExcitation,
    block_configs,
    make_divisible,
    make_features,
    mobilenet_v3_large,
    mobilenet_v3_small,
    norm_layer,
)
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
    "MOBILENET_V3_TABLES",
    "VGG",
    "VGG_VARIANTS",
    "AlexNet",
    "BlockConfig",
    "BlockSpec",
    "ClassifierBackbone",
    "ConvNormActivation",
    "FrozenBatchNorm2d",
    "GoogLeNet",
    "GoogLeNetOutputs",
    "InvertedResidual",
    "LeNet5",
    "MobileNetV3",
    "MobileNetV3Table",
    "ResNet",
    "SqueezeExcitation",
    "block_configs",
    "build_backbone",
    "list_backbones",
    "make_divisible",
    "make_features",
    "make_norm",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "norm_layer",
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
