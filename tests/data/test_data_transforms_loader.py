"""Transforms (flip against a pixel oracle) and the skipping loader."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from detkit.data.base import DetectionDataset, Sample, coco_from_dict
from detkit.data.loader import Batch, build_loader, collate
from detkit.data.transforms import Compose, RandomHorizontalFlip, hflip
from detkit.errors import DataError
from detkit.structures import Targets


def _box_sample(boxes: list[list[int]], h: int = 12, w: int = 20, image_id: int = 1) -> Sample:
    """A sample whose masks paint exactly its integer boxes."""
    masks = torch.zeros((len(boxes), h, w), dtype=torch.uint8)
    for g, (x1, y1, x2, y2) in enumerate(boxes):
        masks[g, y1:y2, x1:x2] = 1
    image = torch.rand((3, h, w), generator=torch.Generator().manual_seed(image_id))
    targets = Targets(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.arange(len(boxes)),
        masks=masks,
        iscrowd=torch.zeros(len(boxes), dtype=torch.bool),
    )
    return Sample(image=image, targets=targets, image_id=image_id, file_name=f"{image_id}.png")


def _mask_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_hflip_matches_the_flipped_pixels() -> None:
    s = _box_sample([[0, 0, 5, 4], [3, 2, 20, 12], [7, 7, 8, 8]])
    f = hflip(s)
    torch.testing.assert_close(f.image, torch.flip(s.image, dims=[2]))
    assert f.targets.masks is not None
    torch.testing.assert_close(f.targets.masks, torch.flip(s.targets.masks, dims=[2]))
    # oracle: the box of each flipped mask
    for g in range(3):
        assert f.targets.boxes[g].tolist() == _mask_box(f.targets.masks[g])
    assert f.targets.labels.tolist() == [0, 1, 2] and f.image_id == 1
    # the input is untouched and flipping twice is the identity
    assert s.targets.boxes[0].tolist() == [0, 0, 5, 4]
    torch.testing.assert_close(hflip(f).targets.boxes, s.targets.boxes)


def test_hflip_empty_and_maskless() -> None:
    s = Sample(image=torch.rand(3, 4, 6), targets=Targets(), image_id=1, file_name="x")
    f = hflip(s)
    assert len(f.targets) == 0 and f.targets.masks is None and f.image.shape == (3, 4, 6)


def test_random_flip_probability_and_seeding() -> None:
    s = _box_sample([[0, 0, 5, 4]])
    never, always = RandomHorizontalFlip(p=0.0), RandomHorizontalFlip(p=1.0)
    assert never(s).targets.boxes[0].tolist() == [0, 0, 5, 4]
    assert always(s).targets.boxes[0].tolist() == [15, 0, 20, 4]

    def decisions(seed: int) -> list[bool]:
        torch.manual_seed(seed)
        t = RandomHorizontalFlip(p=0.5)
        return [t(s).targets.boxes[0, 0].item() != 0 for _ in range(64)]

    first = decisions(0)
    assert decisions(0) == first  # torch's RNG drives it
    assert 0 < sum(first) < 64
    torch.manual_seed(0)
    expected = [torch.rand(()).item() < 0.5 for _ in range(64)]
    assert first == expected
    with pytest.raises(ValueError):
        RandomHorizontalFlip(p=1.5)


def test_compose_order() -> None:
    calls: list[str] = []

    def tag(name: str):
        def t(sample: Sample) -> Sample:
            calls.append(name)
            return sample

        return t

    s = _box_sample([[0, 0, 5, 4]])
    out = Compose([tag("a"), RandomHorizontalFlip(p=1.0), tag("b")])(s)
    assert calls == ["a", "b"] and out.targets.boxes[0].tolist() == [15, 0, 20, 4]


# --------------------------------------------------------------------------- loader


class _ListDataset(DetectionDataset):
    """In-memory dataset; the items in ``bad`` raise DataError like a corrupt file."""

    def __init__(self, n: int, bad: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.n, self.bad = n, bad
        self.class_names = ["a", "b", "c"]
        self.category_ids = [1, 2, 3]
        self.image_ids = list(range(1, n + 1))
        self.loads = 0

    def __len__(self) -> int:
        return self.n

    def image_path(self, index: int) -> Path:
        return Path(f"img{index}.png")

    def __getitem__(self, index: int) -> Sample:
        self.loads += 1
        if index in self.bad:
            raise DataError(f"cannot decode image '{self.image_path(index)}': not an image or corrupt")
        return _box_sample([[index % 10, 0, 10 + index % 10, 5]], image_id=index + 1)

    def coco_gt(self) -> COCO:
        images = [{"id": i, "file_name": f"img{i - 1}.png", "height": 12, "width": 20} for i in self.image_ids]
        return coco_from_dict({"images": images, "annotations": [], "categories": []})


def test_collate() -> None:
    a, b = _box_sample([[0, 0, 1, 1]], image_id=3), _box_sample([], image_id=4)
    batch = collate([a, None, b])
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.image_ids == [3, 4] and batch.file_names == ["3.png", "4.png"]
    assert batch.images[0] is a.image and batch.targets[1] is b.targets
    empty = collate([None, None])
    assert len(empty) == 0 and empty.images == [] and empty.targets == []
    moved = batch.to("cpu")
    assert moved.image_ids == [3, 4] and torch.equal(moved.images[0], a.image)


def test_loader_skips_bad_items_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    ds = _ListDataset(7, bad={2, 5, 6})
    loader = build_loader(ds, batch_size=2, shuffle=False)
    with caplog.at_level(logging.WARNING, logger="detkit.data.loader"):
        epochs = [[b.image_ids for b in loader] for _ in range(2)]
    # image ids 1..7, of which 3, 6 and 7 are bad: the last batch (7) comes out empty
    assert epochs[0] == epochs[1] == [[1, 2], [4], [5], []]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3
    assert all(any(f"img{i}.png" in m for m in warned) for i in (2, 5, 6))
    assert ds.loads == 7 + 4  # bad items are not read again
    # the protocol passes through the wrapper
    assert loader.dataset.class_names == ["a", "b", "c"]  # type: ignore[attr-defined]
    assert loader.dataset.coco_gt().getImgIds() == ds.image_ids  # type: ignore[attr-defined]


def test_loader_shuffle_is_seeded_and_transforms_apply() -> None:
    ds = _ListDataset(20)

    def order(seed: int) -> list[int]:
        loader = build_loader(ds, batch_size=4, shuffle=True, seed=seed)
        return [i for b in loader for i in b.image_ids]

    assert order(1) == order(1) and sorted(order(1)) == list(range(1, 21))
    assert order(1) != order(2)
    loader = build_loader(ds, batch_size=20, shuffle=False, transforms=RandomHorizontalFlip(p=1.0))
    batch = next(iter(loader))
    for i, t in enumerate(batch.targets):
        x = i % 10
        assert t.boxes[0].tolist() == [20 - (10 + x), 0, 20 - x, 5]
    dropped = build_loader(ds, batch_size=6, shuffle=False, drop_last=True)
    assert [len(b) for b in dropped] == [6, 6, 6]


def test_loader_with_workers() -> None:
    ds = _ListDataset(6, bad={1})
    loader = build_loader(ds, batch_size=3, shuffle=True, workers=2, seed=0)
    ids = sorted(i for b in loader for i in b.image_ids)
    assert ids == [1, 3, 4, 5, 6]


def test_sample_image_size() -> None:
    assert _box_sample([], h=7, w=9).image_size == (7, 9)


def test_targets_from_numpy_helper_shapes() -> None:
    # an empty sample still collates to well-formed (0, 4) boxes
    batch = collate([_box_sample([])])
    assert batch.targets[0].boxes.shape == (0, 4) and np.asarray(batch.targets[0].labels).shape == (0,)
