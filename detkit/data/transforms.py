"""Data augmentation on :class:`~detkit.data.base.Sample`.

A transform is any callable ``Sample -> Sample`` that returns a new sample (the
input is not modified) with the image ``(3, H, W)`` and its targets changed
consistently: boxes stay absolute ``xyxy`` pixels of the new image, masks
``(G, H, W)`` follow the image.

Randomness comes from torch's global RNG, so a run is reproducible with
``torch.manual_seed``; in DataLoader workers torch seeds each worker from the
loader's generator (see :func:`detkit.data.loader.build_loader`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from detkit.data.base import Sample

__all__ = ["Compose", "RandomHorizontalFlip", "Transform", "hflip"]

#: The signature of a transform.
Transform = Callable[[Sample], Sample]


def hflip(sample: Sample) -> Sample:
    """Mirror a sample left-right.

    A box ``(x1, y1, x2, y2)`` of an image of width W becomes ``(W - x2, y1, W - x1, y2)``.
    """
    width = sample.image.shape[-1]
    targets = sample.targets
    boxes = targets.boxes.clone()
    boxes[:, 0] = width - targets.boxes[:, 2]
    boxes[:, 2] = width - targets.boxes[:, 0]
    masks = targets.masks.flip(-1) if targets.masks is not None else None
    return dataclasses.replace(
        sample,
        image=sample.image.flip(-1),
        targets=targets.replace(boxes=boxes, masks=masks),
    )


class RandomHorizontalFlip:
    """Mirror a sample left-right with probability ``p``.

    Args:
        p: the flip probability, in ``[0, 1]``.
    """

    def __init__(self, *, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, sample: Sample) -> Sample:
        """The sample, flipped or not."""
        if torch.rand(()).item() < self.p:
            return hflip(sample)
        return sample

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms in order.

    Args:
        transforms: the transforms, first applied first.
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        """The sample after every transform."""
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"
