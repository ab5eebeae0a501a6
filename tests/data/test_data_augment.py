"""HSV gains, random affine and mosaic (detkit.data.augment) against pixel oracles, and their loader wiring.

Oracles: boxes moved by corner arithmetic against the boxes of the same rectangles painted
as masks and warped by OpenCV; mosaic boxes against the pixels of their source image;
HSV against OpenCV's colour conversions; a seeded item against itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from detkit.config import augment_settings, load_config
from detkit.data.augment import (
    Mosaic,
    RandomAffine,
    RandomHSV,
    ResizeLongest,
    adjust_hsv,
    hsv_to_rgb,
    rgb_to_hsv,
    training_transforms,
)
from detkit.data.base import DetectionDataset, Sample, coco_from_dict
from detkit.data.loader import SkipBadItems, item_seed
from detkit.data.shapes import ShapesDataset
from detkit.data.transforms import Compose, RandomHorizontalFlip
from detkit.engine.run import train_loader
from detkit.errors import ConfigError, DataError
from detkit.ops import masks_to_boxes
from detkit.structures import Targets


def _box_sample(boxes: list[list[int]], h: int, w: int, *, masks: bool = True, seed: int = 0) -> Sample:
    """A random image whose objects are integer boxes, painted exactly by their masks; label g for box g."""
    painted = torch.zeros((len(boxes), h, w), dtype=torch.uint8)
    for g, (x1, y1, x2, y2) in enumerate(boxes):
        painted[g, y1:y2, x1:x2] = 1
    targets = Targets(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.arange(len(boxes)),
        masks=painted if masks else None,
        iscrowd=torch.zeros(len(boxes), dtype=torch.bool),
    )
    image = torch.rand((3, h, w), generator=torch.Generator().manual_seed(seed))
    return Sample(image=image, targets=targets, image_id=seed + 1, file_name=f"{seed}.png")


def _flat_sample(index: int, h: int, w: int, *, masks: bool) -> Sample:
    """One flat colour per image (item ``index``), three boxes labelled ``index``."""
    boxes = [[1, 1, w // 2, h // 2], [w // 3, h // 3, w - 1, h - 1], [0, h // 2, w // 4 + 2, h]]
    sample = _box_sample(boxes, h, w, masks=masks)
    colour = torch.tensor([index / 10, 1 - index / 10, (index % 3) / 3])[:, None, None]
    labels = torch.full((3,), index, dtype=torch.int64)
    return Sample(
        image=colour.expand(3, h, w).clone(),
        targets=sample.targets.replace(labels=labels),
        image_id=index + 1,
        file_name=f"img{index}.png",
    )


class _FlatDataset(DetectionDataset):
    """Flat-coloured images of several sizes; the items in ``bad`` raise DataError like a corrupt file."""

    SIZES = ((40, 40), (24, 40), (40, 30), (32, 32), (20, 36))

    def __init__(self, n: int, *, bad: frozenset[int] = frozenset(), masks: bool = True) -> None:
        self.n, self.bad, self.masks = n, bad, masks
        self.class_names = [str(i) for i in range(n)]
        self.category_ids = list(range(1, n + 1))
        self.image_ids = list(range(1, n + 1))
        self.loads: list[int] = []

    def __len__(self) -> int:
        return self.n

    def image_path(self, index: int) -> Path:
        return Path(f"img{index}.png")

    def __getitem__(self, index: int) -> Sample:
        self.loads.append(index)
        if index in self.bad:
            raise DataError(f"cannot decode image '{self.image_path(index)}': not an image or corrupt")
        h, w = self.SIZES[index % len(self.SIZES)]
        return _flat_sample(index, h, w, masks=self.masks)

    def coco_gt(self) -> COCO:
        return coco_from_dict({"images": [], "annotations": [], "categories": []})


def _check_valid(sample: Sample) -> None:
    """Boxes inside the image with positive sides; every field has one row per object."""
    h, w = sample.image_size
    t = sample.targets
    assert t.boxes.shape == (len(t), 4) and t.labels.shape == (len(t),)
    if len(t):
        assert (t.boxes[:, 2] > t.boxes[:, 0]).all() and (t.boxes[:, 3] > t.boxes[:, 1]).all()
        assert t.boxes[:, :2].min() >= 0 and (t.boxes[:, 2] <= w).all() and (t.boxes[:, 3] <= h).all()
    if t.masks is not None:
        assert t.masks.shape == (len(t), h, w)
    assert sample.image.min() >= 0 and sample.image.max() <= 1


def _by_label(targets: Targets) -> dict[int, list[float]]:
    return {int(label): box for label, box in zip(targets.labels.tolist(), targets.boxes.tolist(), strict=True)}


# --------------------------------------------------------------------------- affine


BOXES = [[3, 4, 20, 15], [30, 10, 58, 38], [0, 30, 12, 48], [40, 2, 46, 8], [22, 20, 40, 44]]


@pytest.mark.parametrize("seed", range(8))
def test_axis_aligned_affine_boxes_match_the_warped_masks(seed: int) -> None:
    """Corner arithmetic (no masks) against the box of each warped rectangle (masks), same matrix."""
    affine = RandomAffine(translate=0.2, scale=(0.5, 1.7))
    torch.manual_seed(seed)
    from_masks = affine(_box_sample(BOXES, 48, 60))
    torch.manual_seed(seed)
    from_corners = affine(_box_sample(BOXES, 48, 60, masks=False))
    _check_valid(from_masks)
    _check_valid(from_corners)
    assert from_masks.targets.masks is not None
    # the boxes of the masked sample are its warped masks' boxes (pixel edges)
    edges = masks_to_boxes(from_masks.targets.masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(from_masks.targets.boxes, edges)
    torch.testing.assert_close(from_masks.image, from_corners.image)  # same draw, same pixels
    masked, cornered = _by_label(from_masks.targets), _by_label(from_corners.targets)
    common = set(masked) & set(cornered)
    # an object may sit on the visibility threshold in one measure and not the other
    assert len(common) >= min(len(masked), len(cornered)) - 1
    for label in common:
        np.testing.assert_allclose(cornered[label], masked[label], atol=1.0)


@pytest.mark.parametrize("seed", range(6))
def test_rotated_boxes_enclose_the_warped_masks(seed: int) -> None:
    affine = RandomAffine(degrees=40, translate=0.1, scale=(0.7, 1.3), shear=10)
    torch.manual_seed(seed)
    from_masks = affine(_box_sample(BOXES, 48, 60))
    torch.manual_seed(seed)
    from_corners = affine(_box_sample(BOXES, 48, 60, masks=False))
    _check_valid(from_masks)
    _check_valid(from_corners)
    masked, cornered = _by_label(from_masks.targets), _by_label(from_corners.targets)
    for label in set(masked) & set(cornered):
        outer, inner = cornered[label], masked[label]
        assert outer[0] <= inner[0] + 1 and outer[1] <= inner[1] + 1
        assert outer[2] >= inner[2] - 1 and outer[3] >= inner[3] - 1


def test_affine_known_matrices() -> None:
    sample = _box_sample([[2, 3, 10, 9], [35, 20, 41, 30]], 32, 40)
    affine = RandomAffine(min_visible=0.5)
    # a whole-pixel shift moves pixels exactly (bilinear at integer positions)
    shifted = affine.apply(sample, np.array([[1.0, 0, 3], [0, 1.0, 2]]), (32, 40))
    torch.testing.assert_close(shifted.image[:, 2:, 3:], sample.image[:, :-2, :-3])
    assert torch.allclose(shifted.image[:, :2, :], torch.tensor(affine.fill))
    # a third of the second box is left (2 of 6 columns): dropped, with its label, mask and crowd flag
    assert shifted.targets.boxes.tolist() == [[5, 5, 13, 11]] and shifted.targets.labels.tolist() == [0]
    assert shifted.targets.masks is not None and shifted.targets.masks.shape == (1, 32, 40)
    assert shifted.targets.iscrowd is not None and shifted.targets.iscrowd.tolist() == [False]
    # twice the size: box edges double, the painted pixels too
    doubled = affine.apply(sample, np.array([[2.0, 0, 0], [0, 2.0, 0]]), (64, 80))
    assert doubled.targets.boxes.tolist() == [[4, 6, 20, 18], [70, 40, 80, 60]]  # 10 of 12 columns left
    maskless = _box_sample([[2, 3, 10, 9], [35, 20, 41, 30]], 32, 40, masks=False)
    corners = affine.apply(maskless, np.array([[2.0, 0, 0], [0, 2.0, 0]]), (64, 80))
    assert corners.targets.boxes.tolist() == [[4, 6, 20, 18], [70, 40, 80, 60]]
    # the identity at the same size is the sample itself
    assert affine.apply(sample, np.eye(2, 3), (32, 40)) is sample


def test_affine_scale_jitter_and_empty_targets() -> None:
    jitter = RandomAffine(translate=0.0, scale=(0.5, 0.5))
    torch.manual_seed(0)
    out = jitter(_box_sample([[0, 0, 20, 16]], 16, 20, masks=False))
    # half size about the centre: (0, 0, 20, 16) -> (5, 4, 15, 12)
    assert out.targets.boxes.tolist() == [[5, 4, 15, 12]] and out.image_size == (16, 20)
    empty = Sample(image=torch.rand(3, 10, 12), targets=Targets(), image_id=1, file_name="e.png")
    torch.manual_seed(0)
    assert len(RandomAffine(degrees=10, output_size=(8, 9))(empty).targets) == 0
    with pytest.raises(ValueError, match="scale"):
        RandomAffine(scale=(1.5, 0.5))


# --------------------------------------------------------------------------- HSV


def _hsv_fixture() -> torch.Tensor:
    """Random colours plus the awkward ones: black, white, greys, primaries, two-channel ties."""
    image = torch.rand((3, 12, 16), generator=torch.Generator().manual_seed(3))
    special = torch.tensor(
        [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [0.7, 0.2, 0.7]]
    )
    image[:, 0, : len(special)] = special.T
    return image


def _cv2_hsv_round_trip(image: torch.Tensor, gains: tuple[float, float, float]) -> torch.Tensor:
    hsv = cv2.cvtColor(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = np.mod(hsv[..., 0] * gains[0], 360.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * gains[1], 0, 1)
    hsv[..., 2] = np.clip(hsv[..., 2] * gains[2], 0, 1)
    return torch.from_numpy(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)).permute(2, 0, 1)


def test_hsv_conversions_match_opencv() -> None:
    image = _hsv_fixture()
    reference = cv2.cvtColor(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), cv2.COLOR_RGB2HSV)
    ours = rgb_to_hsv(image).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours[..., 1:], reference[..., 1:], atol=1e-5)
    hue_gap = np.abs(ours[..., 0] - reference[..., 0])
    assert np.minimum(hue_gap, 360 - hue_gap).max() < 0.01  # degrees; OpenCV rounds its float hue a little
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(image)), image, atol=1e-5, rtol=0)


@pytest.mark.parametrize("gains", [(1.0, 1.0, 1.0), (1.3, 0.6, 1.2), (0.8, 1.7, 0.5), (1.015, 1.0, 1.0)])
def test_hsv_gains_match_the_opencv_round_trip(gains: tuple[float, float, float]) -> None:
    image = _hsv_fixture()
    out = adjust_hsv(image, hue_gain=gains[0], saturation_gain=gains[1], value_gain=gains[2])
    torch.testing.assert_close(out, _cv2_hsv_round_trip(image, gains), atol=1e-4, rtol=0)
    assert out.min() >= 0 and out.max() <= 1


def test_random_hsv_zero_gains_is_the_identity_and_targets_stay() -> None:
    sample = _box_sample(BOXES, 48, 60)
    torch.manual_seed(0)
    same = RandomHSV(h=0, s=0, v=0)(sample)
    torch.testing.assert_close(same.image, sample.image, atol=1e-5, rtol=0)
    changed = RandomHSV(h=0.5, s=0.7, v=0.4)(sample)
    assert not torch.allclose(changed.image, sample.image, atol=1e-3)
    assert changed.targets is sample.targets and changed.image.min() >= 0 and changed.image.max() <= 1
    with pytest.raises(ValueError, match="s must be in"):
        RandomHSV(s=1.5)


# --------------------------------------------------------------------------- mosaic


def test_mosaic_tiles_sit_where_their_boxes_say() -> None:
    """combine() with a known centre: every tile's pixels at its shifted, clipped boxes."""
    sizes = [(32, 32), (20, 32), (32, 24), (16, 32)]  # longer side = the tile: no resizing
    samples = [_box_sample([[1, 2, 12, 14], [8, 4, w - 1, h]], h, w, seed=q) for q, (h, w) in enumerate(sizes)]
    for q, s in enumerate(samples):
        s.targets = s.targets.replace(labels=torch.tensor([2 * q, 2 * q + 1]))
    mosaic = Mosaic(_FlatDataset(1), min_visible=0.0, min_size=0.0)
    xc, yc = 26, 40
    out = mosaic.combine(samples, tile=32, centre=(xc, yc))
    assert out.image_size == (64, 64) and out.image_id == samples[0].image_id
    _check_valid(out)
    origins = [(xc - 32, yc - 32), (xc, yc - 20), (xc - 24, yc), (xc, yc)]  # each tile's top-left corner
    assert out.targets.masks is not None
    targets = out.targets
    for box, label, mask in zip(targets.boxes.tolist(), targets.labels.tolist(), targets.masks, strict=True):
        q = label // 2
        x0, y0 = origins[q]
        x1, y1, x2, y2 = (int(v) for v in box)
        source = samples[q].image[:, y1 - y0 : y2 - y0, x1 - x0 : x2 - x0]
        torch.testing.assert_close(out.image[:, y1:y2, x1:x2], source)
        assert mask.sum() == (x2 - x1) * (y2 - y1) and mask[y1:y2, x1:x2].all()
    # the top-left tile's first box is cut at the canvas's left edge
    assert _by_label(out.targets)[0] == [0, 10, 6, 22]
    # nothing is painted outside the tiles: the canvas keeps its fill there
    painted = torch.zeros(64, 64, dtype=torch.bool)
    for q, (h, w) in enumerate(sizes):
        x0, y0 = origins[q]
        painted[max(y0, 0) : y0 + h, max(x0, 0) : x0 + w] = True
    assert torch.all(out.image[:, ~painted] == mosaic.fill)


@pytest.mark.parametrize("masks", [True, False])
def test_mosaic_boxes_cover_their_own_image(masks: bool) -> None:
    """Drawn centres and neighbours, resized tiles: every box holds its source's flat colour."""
    dataset = _FlatDataset(5, masks=masks)
    mosaic = Mosaic(dataset, min_visible=0.3)
    for seed in range(6):
        torch.manual_seed(seed)
        item = dataset[seed % 5]
        out = mosaic(item)
        side = 2 * max(item.image_size)
        assert out.image_size == (side, side)
        _check_valid(out)
        assert (out.targets.masks is not None) == masks
        boxes = out.targets.boxes.round().int().tolist()
        for (x1, y1, x2, y2), index in zip(boxes, out.targets.labels.tolist(), strict=True):
            colour = dataset[index].image[:, 0, 0]
            inner = out.image[:, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1]  # away from resampled edges
            torch.testing.assert_close(inner, colour[:, None, None].expand_as(inner))


def test_mosaic_then_affine_crops_to_the_tile_size() -> None:
    dataset = _FlatDataset(5)
    mosaic = Mosaic(dataset, output_size=48, affine=RandomAffine(degrees=5, translate=0.1, scale=(0.5, 1.5)))
    for seed in range(4):
        torch.manual_seed(seed)
        out = mosaic(dataset[0])
        assert out.image_size == (48, 48)
        _check_valid(out)
    # p=0: the affine alone, at the sample's own size
    torch.manual_seed(0)
    kept = Mosaic(dataset, p=0.0, affine=RandomAffine())(dataset[1])
    assert kept.image_size == dataset[1].image_size
    # the plain crop (no affine settings) leaves a sample it does not tile untouched
    sample = dataset[2]
    assert Mosaic(dataset, p=0.0, affine=RandomAffine(translate=0.0, scale=(1.0, 1.0)))(sample) is sample


def test_a_bad_neighbour_is_redrawn_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    bad = frozenset({1, 2, 3})
    dataset = _FlatDataset(8, bad=bad)
    mosaic = Mosaic(dataset)
    view = SkipBadItems(dataset, transforms=mosaic)
    with caplog.at_level(logging.WARNING, logger="detkit.data.augment"):
        first = [view[(0, item_seed(0, 1, s))] for s in range(10)]
    assert mosaic.bad_items and mosaic.bad_items <= bad
    for out in first:
        assert out is not None and out.image_size == (80, 80)
        assert not set(out.targets.labels.tolist()) & bad
    assert len(caplog.records) == len(mosaic.bad_items)  # each bad neighbour reported once
    assert sum(dataset.loads.count(i) for i in bad) == len(mosaic.bad_items)  # and not read again
    # the draws do not depend on what is already known to be bad
    again = [view[(0, item_seed(0, 1, s))] for s in range(10)]
    for a, b in zip(first, again, strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(a.image, b.image)
        torch.testing.assert_close(a.targets.boxes, b.targets.boxes)
    # nothing readable around it: the item comes out whole
    lonely = Mosaic(_FlatDataset(3, bad=frozenset({0, 1, 2})), max_tries=3)
    torch.manual_seed(1)
    sample = _FlatDataset(1)[0]
    assert lonely(sample) is sample


def test_mixed_masks_are_refused() -> None:
    with_masks, without = _flat_sample(0, 20, 20, masks=True), _flat_sample(1, 20, 20, masks=False)
    with pytest.raises(DataError, match="masks"):
        Mosaic(_FlatDataset(1)).combine([with_masks, without, with_masks, with_masks], tile=20, centre=(20, 20))


# --------------------------------------------------------------------------- seeding and the loader


def test_same_item_seed_same_sample_other_seed_other_sample() -> None:
    dataset = _FlatDataset(6)
    transforms = training_transforms(
        dataset=dataset, hflip=0.5, hsv={"h": 0.1, "s": 0.7, "v": 0.4},
        affine={"degrees": 10, "translate": 0.1, "scale": (0.5, 1.5), "shear": 2}, mosaic=0.8,
    )
    view = SkipBadItems(dataset, transforms=transforms)
    torch.manual_seed(123)  # the global state does not matter inside the seeded section
    a = view[(2, item_seed(0, 3, 2))]
    torch.manual_seed(456)
    b = view[(2, item_seed(0, 3, 2))]
    c = view[(2, item_seed(0, 4, 2))]
    assert a is not None and b is not None and c is not None
    torch.testing.assert_close(a.image, b.image)
    torch.testing.assert_close(a.targets.boxes, b.targets.boxes)
    assert a.targets.masks is not None and b.targets.masks is not None and torch.equal(a.targets.masks, b.targets.masks)
    assert a.image.shape != c.image.shape or not torch.allclose(a.image, c.image)


def test_defaults_keep_the_plain_flip() -> None:
    settings = augment_settings(load_config(None)["data"]["augment"])
    assert settings == {"hflip": 0.5, "hsv": None, "affine": None, "mosaic": 0.0, "mosaic_off_last": 0.0, "size": None}
    only_flip = training_transforms(dataset=None, hflip=0.5)
    assert isinstance(only_flip, RandomHorizontalFlip)  # the same draws as before these options
    assert training_transforms(hflip=0.0) is None
    chain = training_transforms(dataset=_FlatDataset(2), hflip=0.5, hsv={"h": 0.1, "s": 0.1, "v": 0.1}, mosaic=1.0)
    assert isinstance(chain, Compose)
    assert [type(t) for t in chain.transforms] == [Mosaic, RandomHSV, RandomHorizontalFlip]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.augment.hsv={h: 2}", "data.augment.hsv.h must be in [0, 1]"),
        ("data.augment.hsv=[1, 2]", "data.augment.hsv must be null, true or a mapping"),
        ("data.augment.affine={degree: 5}", "did you mean 'degrees'"),
        ("data.augment.affine={scale: [2, 1]}", "data.augment.affine.scale must be [low, high]"),
        ("data.augment.affine={translate: 0.9}", "data.augment.affine.translate must be in [0, 0.5]"),
        ("data.augment.mosaic=1.5", "data.augment.mosaic must be in [0, 1]"),
        ("data.augment.hflip=x", "data.augment.hflip must be a number"),
        ("data.augment.size=0", "data.augment.size must be null or a positive number"),
    ],
)
def test_bad_augment_settings_are_config_errors(override: str, message: str) -> None:
    config = load_config(None, [override])
    with pytest.raises(ConfigError) as info:
        augment_settings(config["data"]["augment"])
    assert message in str(info.value)


def test_augment_settings_fill_defaults() -> None:
    settings = augment_settings({"hsv": True, "affine": {"scale": 0.25, "degrees": 3}, "mosaic": 1})
    assert settings["hsv"] == {"h": 0.015, "s": 0.7, "v": 0.4}
    assert settings["affine"] == {"degrees": 3.0, "translate": 0.1, "scale": [0.75, 1.25], "shear": 0.0}
    assert settings["mosaic"] == 1.0 and settings["hflip"] == 0.5


@pytest.mark.parametrize("masks", [False, True])
def test_loader_with_every_augmentation_on_shapes(tmp_path: Path, masks: bool) -> None:
    dataset = ShapesDataset(root=tmp_path / "shapes", num_train=8, num_val=1, image_size=64, masks=masks)
    config = load_config(
        None,
        [
            "data.augment={hflip: 0.5, hsv: true, affine: {degrees: 10, translate: 0.1, scale: [0.5, 1.5], shear: 2},"
            " mosaic: 1.0, mosaic_off_last: 0.5}",
            "train.batch_size=4",
            "train.max_iters=4",
        ],
    )
    loader = train_loader(config, dataset)
    sampler = loader.batch_sampler
    assert sampler.final_from == (2, 0)  # 2 iterations an epoch, the last 2 of 4 without mosaic
    assert not any(isinstance(t, Mosaic) for t in loader.dataset.final_transforms.transforms)
    objects = 0
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert {k[2] for batch in keys for k in batch} == {epoch == 2}
        for batch in loader:
            assert len(batch) == 4
            for image, targets in zip(batch.images, batch.targets, strict=True):
                assert image.shape == (3, 64, 64)
                _check_valid(Sample(image=image, targets=targets, image_id=0, file_name=""))
                assert (targets.masks is not None) == masks
                if masks and len(targets):
                    edges = masks_to_boxes(targets.masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])
                    torch.testing.assert_close(targets.boxes, edges)
                objects += len(targets)
    assert objects > 8


def test_resize_longest_scales_image_boxes_and_masks_together() -> None:
    sample = _box_sample([[10, 20, 50, 60], [100, 0, 160, 40]], 120, 200)
    small = ResizeLongest(100)(sample)
    assert small.image_size == (60, 100)
    torch.testing.assert_close(small.targets.boxes, sample.targets.boxes / 2)
    # the masks are the same rectangles at half size: their boxes are the halved boxes
    edges = masks_to_boxes(small.targets.masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(edges, small.targets.boxes)
    assert ResizeLongest(400)(sample) is sample  # never upscales


def test_augment_size_makes_mosaic_tiles_of_that_size(tmp_path: Path) -> None:
    dataset = ShapesDataset(root=tmp_path / "shapes", num_train=8, num_val=1, image_size=64)
    config = load_config(None, ["data.augment={hflip: 0.0, affine: true, mosaic: 1.0, size: 32}", "train.batch_size=4"])
    for batch in train_loader(config, dataset):
        assert all(image.shape == (3, 32, 32) for image in batch.images)
        for image, targets in zip(batch.images, batch.targets, strict=True):
            _check_valid(Sample(image=image, targets=targets, image_id=0, file_name=""))
