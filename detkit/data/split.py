"""Held-out splits of one annotated set, without copying images.

``data.val: {name: split, of: train, fraction: 0.2, seed: 0}`` makes the validation
set a fraction of the images of ``data.train``, and the training set the rest
(:func:`detkit.engine.build.build_dataset` builds both from the source's section).
Both are :class:`SubsetDataset` views of the one source dataset: same classes and
category ids, the source's image ids and files.

The split is a function of the source's item order, ``fraction``, ``seed`` and
``stratify`` alone (:func:`split_indices`), so the resolved config a run writes
reproduces it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from detkit.data.base import DetectionDataset, Sample, coco_from_dict
from detkit.errors import DataError

__all__ = ["SPLIT_DEFAULTS", "SubsetDataset", "split_dataset", "split_indices"]

#: The settings of a ``split`` dataset section and their defaults.
SPLIT_DEFAULTS: dict[str, Any] = {"of": "train", "fraction": 0.2, "seed": 0, "stratify": True}


class SubsetDataset(DetectionDataset):
    """Items ``indices`` of ``source``, in that order, as a dataset of their own.

    Args:
        source: the dataset to take items from.
        indices: item indices of ``source``.
        description: what the subset is, for ``repr``.
    """

    def __init__(self, source: DetectionDataset, indices: list[int], *, description: str = "") -> None:
        self.source = source
        self.indices = [int(i) for i in indices]
        self.description = description
        self.class_names = list(source.class_names)
        self.category_ids = list(source.category_ids)
        self.image_ids = [source.image_ids[i] for i in self.indices]
        self._coco: COCO | None = None

    def __len__(self) -> int:
        """Number of images."""
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        """Item ``indices[index]`` of the source."""
        return self.source[self.indices[index]]

    def image_path(self, index: int) -> Path:
        """The image file of item ``index``."""
        return self.source.image_path(self.indices[index])

    def coco_gt(self) -> COCO:
        """The source's ground truth restricted to this subset's images."""
        if self._coco is None:
            data = self.source.coco_gt().dataset
            keep = set(self.image_ids)
            self._coco = coco_from_dict(
                {
                    **{k: v for k, v in data.items() if k not in ("images", "annotations")},
                    "images": [im for im in data["images"] if im["id"] in keep],
                    "annotations": [a for a in data.get("annotations", []) if a["image_id"] in keep],
                }
            )
        return self._coco

    def __repr__(self) -> str:
        return f"SubsetDataset({self.description or 'subset'}, {len(self)} of {len(self.source)} images)"


def _strata(dataset: DetectionDataset) -> list[int]:
    """Per item: the category id of its rarest class (by images holding it), -1 for background.

    Crowd objects do not count.
    """
    data = dataset.coco_gt().dataset
    classes: dict[int, set[int]] = {}
    for ann in data.get("annotations", []):
        if not ann.get("iscrowd"):
            classes.setdefault(int(ann["image_id"]), set()).add(int(ann["category_id"]))
    per_item = [classes.get(image_id, set()) for image_id in dataset.image_ids]
    images_with = Counter(c for cats in per_item for c in cats)
    return [min(cats, key=lambda c: (images_with[c], c)) if cats else -1 for cats in per_item]


def split_indices(
    dataset: DetectionDataset, *, fraction: float, seed: int = 0, stratify: bool = True
) -> tuple[list[int], list[int]]:
    """Split the items of ``dataset`` into a held-out part and the rest.

    ``round(fraction * N)`` items are held out (at least one, and at least one
    left). With ``stratify`` every stratum (images by their rarest class, and
    background images) gives its share, rounded by largest remainders, so each
    class and the background are represented as in the whole set; the items of a
    stratum are drawn at random. Deterministic given the dataset's item order,
    ``fraction`` and ``seed``.

    Returns:
        ``(held_out, rest)``: sorted item indices, disjoint, together ``0..N-1``.

    Raises:
        ValueError: ``fraction`` is not strictly between 0 and 1.
        DataError: the dataset has fewer than two images.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    n = len(dataset)
    if n < 2:
        raise DataError(f"cannot split {dataset!r}: it has {n} image(s); a split needs at least 2")
    total = min(max(round(float(fraction) * n), 1), n - 1)
    rng = np.random.default_rng(int(seed))
    keys = _strata(dataset) if stratify else [0] * n
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    order = sorted(groups)
    exact = {k: total * len(groups[k]) / n for k in order}
    counts = {k: int(exact[k]) for k in order}
    by_remainder = sorted(order, key=lambda k: (-(exact[k] - counts[k]), -len(groups[k]), k))
    for k in by_remainder[: total - sum(counts.values())]:
        counts[k] += 1
    held_out: list[int] = []
    for k in order:
        members = groups[k]
        picked = rng.permutation(len(members))[: counts[k]]
        held_out += [members[j] for j in picked]
    held = set(held_out)
    return sorted(held), [i for i in range(n) if i not in held]


def split_dataset(
    *,
    source: DetectionDataset,
    held_out: bool,
    of: str = SPLIT_DEFAULTS["of"],
    fraction: float = SPLIT_DEFAULTS["fraction"],
    seed: int = SPLIT_DEFAULTS["seed"],
    stratify: bool = SPLIT_DEFAULTS["stratify"],
) -> SubsetDataset:
    """A held-out fraction of the images of another ``data`` section, or the rest of them.

    ``data.val: {name: split, of: train, fraction: 0.2}`` validates on 20 % of the
    images of ``data.train``, which then trains on the other 80 %
    (:func:`split_indices`: stratified by each image's rarest class, deterministic).

    Args:
        source: (set by detkit) the dataset of section ``data.<of>``.
        held_out: (set by detkit) true for the held-out fraction, false for the rest.
        of: the ``data`` section whose images are split (``train``).
        fraction: the fraction of its images held out, strictly between 0 and 1.
        seed: the seed of the random draw.
        stratify: keep each class's (and the background's) share in both parts.
    """
    held, rest = split_indices(source, fraction=fraction, seed=seed, stratify=stratify)
    part = "held out" if held_out else "rest"
    description = f"{part} of data.{of}, fraction {fraction}, seed {seed}: {source!r}"
    return SubsetDataset(source, held if held_out else rest, description=description)
