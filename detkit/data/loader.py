"""Batching datasets for training and evaluation.

:func:`build_loader` wraps a dataset so that a bad item never stops a long run: an
item whose image is missing or corrupt (a :class:`~detkit.errors.DataError`) is
reported once with ``logging.warning`` naming the file, and skipped from then on.
:func:`collate` drops skipped items, so a batch may hold fewer images than
``batch_size`` -- or none: **consumers must skip a batch with** ``len(batch) == 0``.

Training draws its batches from a :class:`TrainBatchSampler`: the order of an epoch
is a function of ``(seed, epoch)`` only, split across the processes of a
distributed run, and each item's augmentation draws from its own RNG seeded by
``(seed, epoch, index)``. A run that resumes mid-epoch, or that runs on two
processes instead of one, therefore sees exactly the same images, flipped the
same way. A run may end with a final phase under other transforms (YOLO's last epochs
without mosaic): the sampler flags the items of the batches from a given position on, and
:class:`SkipBadItems` applies its ``final_transforms`` to them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from detkit.data.base import DetectionDataset, Sample
from detkit.data.transforms import Transform
from detkit.errors import DataError
from detkit.structures import Targets

__all__ = ["Batch", "SkipBadItems", "TrainBatchSampler", "build_loader", "collate", "item_seed"]

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
        final_transforms: applied instead to the items a :class:`TrainBatchSampler`
            flags as the run's final phase, or None.
    """

    def __init__(
        self,
        dataset: DetectionDataset,
        *,
        transforms: Transform | None = None,
        final_transforms: Transform | None = None,
    ) -> None:
        self.dataset = dataset
        self.transforms = transforms
        self.final_transforms = final_transforms
        self.bad_items: set[int] = set()
        self.reasons: dict[int, str] = {}  # item -> the DataError's message (in this process)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int] | tuple[int, int, bool]) -> Sample | None:
        """Item ``key``, or ``(index, seed)``: the transforms then draw from torch's RNG seeded with ``seed``;
        ``(index, seed, True)`` takes the final phase's transforms."""
        index, seed = (key[0], key[1]) if isinstance(key, tuple) else (key, None)
        final = isinstance(key, tuple) and len(key) == 3 and bool(key[2])
        transforms = self.final_transforms if final else self.transforms
        if index in self.bad_items:
            return None
        try:
            sample = self.dataset[index]
        except DataError as e:
            self.bad_items.add(index)
            self.reasons[index] = str(e)
            logger.warning("skipping item %d: %s", index, e)
            return None
        if transforms is None:
            return sample
        if seed is None:
            return transforms(sample)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return transforms(sample)

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


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of item ``index`` in ``epoch`` of a run seeded with ``seed``."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + index) % (2**63)


class TrainBatchSampler(Sampler[list[tuple[int, int]] | list[tuple[int, int, bool]]]):
    """Batches of ``(index, augmentation seed)`` for one process of a (possibly distributed) run.

    Epoch ``e``'s order is a permutation seeded by ``(seed, e)``, cut to a multiple of
    ``world_size``; process ``rank`` takes every ``world_size``-th item from position
    ``rank`` and groups them by ``batch_size``, dropping an incomplete last batch.
    So ``world_size`` processes with batch ``b`` see, step by step, the same images as
    one process with batch ``world_size * b``.

    Args:
        size: items in the dataset.
        batch_size: items per batch of this process.
        seed: seeds the order and the augmentation.
        rank: this process's index in ``[0, world_size)``.
        world_size: processes sharing the data.
        shuffle: permute each epoch (else the dataset order).
        final_from: ``(epoch, batch)``: from batch ``batch`` of epoch ``epoch`` on, items are
            ``(index, seed, True)``, the run's final phase (see :class:`SkipBadItems`), and
            before it ``(index, seed, False)``; None: no final phase, ``(index, seed)``.
    """

    def __init__(
        self,
        size: int,
        *,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        final_from: tuple[int, int] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.size = size
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.final_from = final_from
        self.epoch = 1
        self.start = 0

    def set_epoch(self, epoch: int, *, start: int = 0) -> None:
        """Draw the order of ``epoch`` next, skipping its first ``start`` batches (a resumed run)."""
        self.epoch = epoch
        self.start = start

    def __len__(self) -> int:
        return (self.size // self.world_size) // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]] | list[tuple[int, int, bool]]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        mine = order[: self.size - self.size % self.world_size][self.rank :: self.world_size]
        for b in range(self.start, len(self)):
            chunk = mine[b * self.batch_size : (b + 1) * self.batch_size]
            if self.final_from is None:
                yield [(i, item_seed(self.seed, self.epoch, i)) for i in chunk]
            else:
                final = (self.epoch, b) >= self.final_from
                yield [(i, item_seed(self.seed, self.epoch, i), final) for i in chunk]


def build_loader(
    dataset: DetectionDataset,
    *,
    batch_size: int,
    shuffle: bool,
    workers: int = 0,
    transforms: Transform | None = None,
    seed: int = 0,
    drop_last: bool = False,
    batch_sampler: TrainBatchSampler | None = None,
    final_transforms: Transform | None = None,
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
        batch_sampler: draw the batches from it instead (``batch_size``, ``shuffle``
            and ``drop_last`` are then its own); see :class:`TrainBatchSampler`.
        final_transforms: the transforms of the final phase that ``batch_sampler`` flags.

    ``loader.dataset`` is a :class:`SkipBadItems` (``loader.dataset.dataset`` is the
    original); it has the dataset protocol members. Batches may be empty; skip them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    view = SkipBadItems(dataset, transforms=transforms, final_transforms=final_transforms)
    if batch_sampler is not None:
        return DataLoader(
            view,
            batch_sampler=batch_sampler,
            num_workers=workers,
            collate_fn=collate,
            generator=generator,
            persistent_workers=workers > 0,
        )
    return DataLoader(
        view,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=workers > 0,
    )
