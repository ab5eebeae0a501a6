"""The Mask R-CNN mask branch (He et al., 2017): RoI features -> one mask per class.

Shape glossary: N images, R_i boxes of image i, R = sum R_i, C channels,
P pooled side (14), M = 2 P mask side (28), K foreground classes (no background
channel: the box head decides the class, the mask head only its shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit import ConfigError
from detkit.ops import at_least_float32
from detkit.stages import ClassRows, MaskHead, MultiScaleRoIAlign
from detkit.structures import FeatureMaps, ImageBatch, SampledProposals, Targets
from detkit_mask_head.targets import mask_loss, mask_targets

Upsample = Literal["transpose", "nearest", "bilinear"]
UPSAMPLE_MODES: tuple[str, ...] = ("transpose", "nearest", "bilinear")


class Upsample2x(nn.Module):
    """Double the spatial size: ``(R, C, P, P) -> (R, C_out, 2P, 2P)``, then ReLU.

    ``transpose``: a 2x2 transposed convolution of stride 2 (Mask R-CNN, torchvision);
    ``nearest`` / ``bilinear``: interpolation, then a 3x3 convolution.
    """

    def __init__(self, *, in_channels: int, out_channels: int, mode: Upsample = "transpose") -> None:
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {mode!r}")
        self.mode = mode
        self.conv: nn.Module
        if mode == "transpose":
            self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode != "transpose":
            x = F.interpolate(x, scale_factor=2.0, mode=self.mode)
        return F.relu(self.conv(x))


class MaskRCNNHead(MaskHead):
    """RoIAlign (P x P), ``num_convs`` 3x3 convs + ReLU, 2x upsampling, 1x1 conv to K masks.

    Args:
        in_channels: channels of the feature maps (set by the detector builder).
        num_classes: K (set by the builder).
        in_features: pyramid levels to pool from, finest first.
        pooled_size: P; the masks are ``2 P`` on a side.
        sampling_ratio: RoIAlign samples per bin side.
        num_convs: 3x3 convolutions before the upsampling.
        conv_channels: their width (and the upsampling's).
        upsample: ``transpose`` | ``nearest`` | ``bilinear``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        pooled_size: int = 14,
        sampling_ratio: int = 2,
        num_convs: int = 4,
        conv_channels: int = 256,
        upsample: Upsample = "transpose",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.mask_size = 2 * pooled_size
        self.in_features = list(in_features)
        self.pooler = MultiScaleRoIAlign(
            in_features=in_features, output_size=pooled_size, sampling_ratio=sampling_ratio
        )
        widths = [in_channels] + [conv_channels] * num_convs
        self.convs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], kernel_size=3, padding=1) for i in range(num_convs)
        )
        self.upsample = Upsample2x(in_channels=widths[-1], out_channels=conv_channels, mode=upsample)
        self.predictor = nn.Conv2d(conv_channels, num_classes, kernel_size=1)
        for module in [*self.convs, self.upsample.conv]:
            assert isinstance(module, nn.Conv2d | nn.ConvTranspose2d)
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)  # type: ignore[arg-type]
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)  # type: ignore[arg-type]

    def class_rows(self) -> dict[str, ClassRows]:
        """The predictor's K mask channels (no background)."""
        return {"predictor.weight": ClassRows(), "predictor.bias": ClassRows()}

    def forward(self, images: ImageBatch, features: FeatureMaps | None, boxes: list[Tensor]) -> Tensor:
        """Mask logits ``(R, K, M, M)`` for ``boxes`` (per image ``(R_i, 4)``, resized pixels)."""
        x = self.pooler(images, features, boxes).features  # (R, C, P, P)
        for conv in self.convs:
            x = F.relu(conv(x))
        x = self.upsample(x)  # (R, C', P, P) -> (R, C', M, M)
        return self.predictor(x)  # (R, C', M, M) -> (R, K, M, M)

    def loss(self, logits: Tensor, positives: list[SampledProposals], targets: list[Targets]) -> Tensor:
        """Binary cross-entropy against the matched masks cropped to the boxes (see :class:`MaskHead`)."""
        gt_crops = []
        for positives_per_image, targets_per_image in zip(positives, targets):
            if targets_per_image.masks is None:
                raise ConfigError(
                    "model.mask_head is set but the training targets have no masks; "
                    "load the dataset with masks (e.g. data.train.masks=true)"
                )
            gt_masks = targets_per_image.without_crowd().masks
            assert gt_masks is not None
            gt_crops.append(
                mask_targets(gt_masks, positives_per_image.proposal_boxes, positives_per_image.gt_index, self.mask_size)
            )
        if not gt_crops:
            return logits.sum() * 0
        return mask_loss(logits, SampledProposals.cat(positives).gt_labels, torch.cat(gt_crops))

    def predict(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Probabilities ``(R, M, M)`` of each region's predicted class (``labels`` ``(R,)``).

        float32 also for half-precision logits (a model under autocast).
        """
        # (R, K, M, M) -> (R, M, M)
        return at_least_float32(logits[torch.arange(labels.shape[0], device=labels.device), labels]).sigmoid()
