"""Mask targets and the mask loss of Mask R-CNN.

Shape glossary: G ground-truth objects of an image, H x W the resized image,
R_i positive proposals of image i, R = sum R_i, K foreground classes,
M the side of the predicted masks (28).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detkit.ops import roi_align


def mask_targets(gt_masks: Tensor, boxes: Tensor, gt_index: Tensor, size: int) -> Tensor:
    """Crop each proposal's matched ground-truth mask to the proposal box, resized to ``size``.

    RoIAlign (``aligned=False``, adaptive sampling) reads the bitmaps directly:
    each proposal's RoI points at its matched mask as the "image" index, so no
    mask is copied.

    Args:
        gt_masks: ``(G, H, W)`` uint8/bool masks in resized-image pixels.
        boxes: ``(R_i, 4)`` proposal boxes in the same pixels.
        gt_index: ``(R_i,)`` int64 index of each proposal's matched mask in ``0..G-1``.
        size: M.

    Returns:
        ``(R_i, M, M)`` float targets in ``[0, 1]``.
    """
    if boxes.shape[0] == 0:
        return boxes.new_zeros((0, size, size))
    # rois: (R_i, 5) rows of (mask index, x1, y1, x2, y2)
    rois = torch.cat([gt_index.to(boxes.dtype)[:, None], boxes], dim=1)
    # (G, H, W) -> (G, 1, H, W): one single-channel "image" per mask
    masks = gt_masks[:, None].to(boxes.dtype)
    return roi_align(masks, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=False)[:, 0]


def mask_loss(logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Mean per-pixel binary cross-entropy on each region's ground-truth class channel only.

    Args:
        logits: ``(R, K, M, M)`` mask logits.
        labels: ``(R,)`` int64 ground-truth classes in ``0..K-1``.
        targets: ``(R, M, M)`` targets in ``[0, 1]``.

    Returns:
        A scalar; ``0`` (still connected to ``logits``) when ``R == 0``.
    """
    if targets.numel() == 0:
        return logits.sum() * 0
    # (R, K, M, M) -> (R, M, M): the channel of each region's class
    chosen = logits[torch.arange(labels.shape[0], device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(chosen, targets.to(chosen.dtype))
