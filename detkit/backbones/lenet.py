"""LeNet-5 (LeCun et al., 1998): conv(6, 5x5) - pool - conv(16, 5x5) - pool - fc120 - fc84 - fc(K).

Two simplifications of the paper, as is usual: C3 connects to all six maps of S2
(the paper's sparse connection table saved parameters on 1998 hardware), and the
subsampling layers are plain pools (the paper's had a trainable scale and bias).
The activation (``tanh`` as in the paper, or ``relu``) and the pool (``avg``, closer
to the paper, or ``max``) are selectable.

The paper feeds 32x32 images (28x28 MNIST digits padded by 2). Smaller images, such
as scikit-learn's 8x8 digits, are zero-padded or upsampled to 32x32 first
(``resize``), or the net is sized for them directly (``resize="none"``, at least
16x16 so that both convolutions fit).

Shape glossary: N images, C_in input channels, S input size, K classes.
Stages (strides in pixels of the 32x32 network input when ``resize`` fits to 32):
``c0`` conv1 ``(N, 6, S-4, S-4)``, ``c1`` conv2 ``(N, 16, (S-4)//2-4, ...)``,
``c2`` pooled conv2 ``(N, 16, ((S-4)//2-4)//2, ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.backbones.registry import ClassifierBackbone

#: The architecture: conv channels (kernel 5, no padding), then hidden fc widths.
LENET5_CONV_CHANNELS = (6, 16)
LENET5_FC_WIDTHS = (120, 84)
#: The input side the paper's network takes.
LENET5_NATIVE_SIZE = 32

STAGE_NAMES = ("c0", "c1", "c2")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
RESIZES = ("none", "pad", "upsample")


class LeNet5(ClassifierBackbone):
    """LeNet-5 as a classifier and as a (tiny) trunk.

    Args:
        in_channels: input channels (1 for digits, 3 for colour images).
        input_size: side S of the square images the network is given.
        resize: ``"none"`` sizes the network for S (S >= 16); ``"pad"`` zero-pads
            images (S <= 32) to 32x32, centred, like the paper's MNIST; ``"upsample"``
            resizes them bilinearly to 32x32.
        activation: ``"relu"`` or ``"tanh"`` (the paper's).
        pool: ``"max"`` or ``"avg"`` (closer to the paper's subsampling).
        frozen_stages: freeze the first k stages (``c0`` = conv1, ``c1`` = conv2).
        out_features: stages returned by :meth:`forward`.
        num_classes: K for a classifier (``fc1``, ``fc2``, ``fc3``); ``None``: trunk only.
        weights: a local state-dict file of this model to load.
    """

    registry_name = "lenet5"

    def __init__(
        self,
        *,
        in_channels: int = 1,
        input_size: int = LENET5_NATIVE_SIZE,
        resize: str = "none",
        activation: str = "relu",
        pool: str = "max",
        frozen_stages: int = 0,
        out_features: Sequence[str] = STAGE_NAMES,
        num_classes: int | None = None,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        _check_choice("resize", resize, RESIZES)
        _check_choice("activation", activation, tuple(ACTIVATIONS))
        _check_choice("pool", pool, tuple(POOLS))
        if resize == "pad" and input_size > LENET5_NATIVE_SIZE:
            raise ValueError(f"LeNet5: cannot pad {input_size}x{input_size} images to 32x32; use resize='upsample'")
        self.input_size = input_size
        self.resize = resize
        size = input_size if resize == "none" else LENET5_NATIVE_SIZE
        # Two valid 5x5 convs, each followed by a 2x2 pool: S -> S-4 -> //2 -> -4 -> //2.
        final_size = ((size - 4) // 2 - 4) // 2
        if final_size < 1:
            raise ValueError(
                f"LeNet5: {size}x{size} inputs are too small for two 5x5 convolutions and pools "
                "(at least 16x16); use resize='pad' or resize='upsample'"
            )
        c1, c2 = LENET5_CONV_CHANNELS
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.act = ACTIVATIONS[activation]()
        self.pool = POOLS[pool](2)
        self._flat_features = c2 * final_size * final_size
        if num_classes is not None:
            h1, h2 = LENET5_FC_WIDTHS
            self.fc1 = nn.Linear(self._flat_features, h1)
            self.fc2 = nn.Linear(h1, h2)
            self.fc3 = nn.Linear(h2, num_classes)
        self._setup_trunk(
            stage_channels={"c0": c1, "c1": c2, "c2": c2},
            out_features=out_features,
            frozen_stages=frozen_stages,
            num_classes=num_classes,
        )
        if weights is not None:
            self._load_weights(weights)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """``c0``: conv1; ``c1``: pool, conv2; ``c2``: pool."""
        return [
            ("c0", nn.Sequential(self.conv1, self.act)),
            ("c1", nn.Sequential(self.pool, self.conv2, self.act)),
            ("c2", nn.Sequential(self.pool)),
        ]

    def _prepare_input(self, x: Tensor) -> Tensor:
        if self.resize == "pad":
            # (N, C, S, S) -> (N, C, 32, 32), the image centred (odd margins: one more at the bottom/right)
            dh, dw = LENET5_NATIVE_SIZE - x.shape[-2], LENET5_NATIVE_SIZE - x.shape[-1]
            return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
        if self.resize == "upsample":
            return F.interpolate(x, size=(LENET5_NATIVE_SIZE, LENET5_NATIVE_SIZE), mode="bilinear", align_corners=False)
        return x

    def _head(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 1)  # (N, 16, s, s) -> (N, 16*s*s)
        if x.shape[1] != self._flat_features:
            raise ValueError(
                f"LeNet5 was built for {self.input_size}x{self.input_size} inputs (resize={self.resize!r}); "
                f"got a final map of {x.shape[1]} features instead of {self._flat_features}"
            )
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"LeNet5: {key} must be one of {choices}, got {value!r}")


__all__ = ["LENET5_CONV_CHANNELS", "LENET5_FC_WIDTHS", "LeNet5"]
