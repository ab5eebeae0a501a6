"""Batching datasets for training and evaluation.

:func:`build_loader` wraps a dataset so that a bad item never stops a long run: an
item whose image is missing or corrupt (a :class:`~detkit.errors.DataError`) is
reported once with ``logging.warning`` naming the file, and skipped from then on.
:func:`collate` drops skipped items, so a batch may hold fewer images than
``batch_size`` -- or none: **consumers must skip a batch with** ``len(batch) == 0``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from detkit.data.base import DetectionDataset, Sample
from detkit.data.transforms import Transform
from detkit.errors import DataError
from detkit.structures import Targets

__all__ = ["Batch", "SkipBadItems", "build_loader", "collate"]

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """A batch of samples of different sizes (N images).

    Attributes:
        images: N tensors ``(3, H_i, W_i)`` float in ``[0, 1]``.
        targets: N targets, boxes in the pixels of their image.
        image_ids: N COCO image ids.
        file_names: N image file names.
    """

    images: list[Tensor]
    targets: list[Targets]
    image_ids: list[int]
    file_names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device | str) -> Batch:
        """The batch with images and targets on ``device``."""
        return Batch(
            images=[im.to(device) for im in self.images],
            targets=[t.to(device) for t in self.targets],
            image_ids=list(self.image_ids),
            file_names=list(self.file_names),
        )


def collate(samples: Sequence[Sample | None]) -> Batch:
    """Gather samples into a :class:`Batch`, dropping ``None`` (skipped) items.

    The result may have zero images; consumers skip such a batch.
    """
    kept = [s for s in samples if s is not None]
    return Batch(
        images=[s.image for s in kept],
        targets=[s.targets for s in kept],
        image_ids=[s.image_id for s in kept],
        file_names=[s.file_name for s in kept],
    )


class SkipBadItems(Dataset[Sample | None]):
    """A dataset view that applies transforms and turns unusable items into ``None``.

    ``self[i]`` is ``transforms(dataset[i])``, or ``None`` when ``dataset[i]`` raises
    :class:`~detkit.errors.DataError`; the error is logged once per item (per
    worker process), kept in :attr:`reasons` and the item is not read again. The dataset protocol members
    (``class_names``, ``category_ids``, ``image_ids``, ``image_path``, ``coco_gt``)
    are passed through.

    Args:
        dataset: the dataset to wrap.
        transforms: applied to every good sample, or None.
    """

    def __init__(self, dataset: DetectionDataset, *, transforms: Transform | None = None) -> None:
        self.dataset = dataset
        self.transforms = transforms
        self.bad_items: set[int] = set()
        self.reasons: dict[int, str] = {}  # item -> the DataError's message (in this process)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample | None:
        if index in self.bad_items:
            return None
        try:
            sample = self.dataset[index]
        except DataError as e:
            self.bad_items.add(index)
            self.reasons[index] = str(e)
            logger.warning("skipping item %d: %s", index, e)
            return None
        return self.transforms(sample) if self.transforms is not None else sample

    @property
    def class_names(self) -> list[str]:
        """The wrapped dataset's class names."""
        return self.dataset.class_names

    @property
    def category_ids(self) -> list[int]:
        """The wrapped dataset's category ids."""
        return self.dataset.category_ids

    @property
    def image_ids(self) -> list[int]:
        """The wrapped dataset's image ids."""
        return self.dataset.image_ids

    def image_path(self, index: int) -> Path:
        """The image file of item ``index``."""
        return self.dataset.image_path(index)

    def coco_gt(self) -> COCO:
        """The wrapped dataset's ground truth."""
        return self.dataset.coco_gt()


def build_loader(
    dataset: DetectionDataset,
    *,
    batch_size: int,
    shuffle: bool,
    workers: int = 0,
    transforms: Transform | None = None,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader[Sample | None]:
    """A DataLoader of :class:`Batch` over ``dataset`` that skips unusable items.

    Args:
        dataset: a detkit dataset.
        batch_size: samples per batch (before skipped items are dropped).
        shuffle: reshuffle every epoch.
        workers: worker processes (0 loads in the main process).
        transforms: applied to each sample (in the worker).
        seed: seeds the shuffling and, with workers, each worker's torch RNG
            (``seed``-derived base + worker id); with ``workers=0`` transforms draw
            from the global torch RNG.
        drop_last: drop the last incomplete batch.

    ``loader.dataset`` is a :class:`SkipBadItems` (``loader.dataset.dataset`` is the
    original); it has the dataset protocol members. Batches may be empty; skip them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(
        SkipBadItems(dataset, transforms=transforms),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=workers > 0,
    )
