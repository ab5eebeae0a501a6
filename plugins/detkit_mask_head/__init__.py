"""detkit_mask_head: the mask branch of Mask R-CNN (He et al., 2017).

Registers the mask head ``mask_rcnn``: its own RoIAlign (14 x 14), four 3x3
convolutions, a 2x upsampling and a 1x1 convolution to one 28 x 28 mask per
class, trained with per-pixel binary cross-entropy on the ground-truth class's
mask of the positive proposals. Enable it with ``model.mask_head: {name: mask_rcnn}``;
the RoI head runs it and the post-processing pastes its masks into the image.
"""

from __future__ import annotations

from detkit.hookspecs import Registrar, hookimpl
from detkit_mask_head.head import MaskRCNNHead, Upsample2x
from detkit_mask_head.targets import mask_loss, mask_targets

__all__ = ["MaskRCNNHead", "Upsample2x", "detkit_add_components", "mask_loss", "mask_targets"]


@hookimpl
def detkit_add_components(registry: Registrar) -> None:
    registry.register("mask_head", "mask_rcnn", MaskRCNNHead)
