"""Classification backbones usable as detection backbones, and necks (FPN)."""

from detkit.backbones.fpn import FPN
from detkit.backbones.norm import FrozenBatchNorm2d, make_norm
from detkit.backbones.resnet import ResNet, resnet18, resnet34, resnet50

__all__ = ["FPN", "FrozenBatchNorm2d", "ResNet", "make_norm", "resnet18", "resnet34", "resnet50"]
