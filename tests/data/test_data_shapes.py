"""The synthetic shapes generator: annotations agree with the pixels, runs are reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from detkit.data.shapes import (
    CLASS_NAMES,
    ShapesDataset,
    generate_shapes,
    mask_to_polygons,
    render_shapes_image,
)
from detkit.errors import ConfigError

PARAMS = {"num_train": 16, "num_val": 4, "image_size": 64, "seed": 3}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, **PARAMS)
    return root


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path))[:, :, ::-1]


def test_layout_and_categories(shapes_root: Path) -> None:
    assert len(list((shapes_root / "train").glob("*.png"))) == 16
    assert len(list((shapes_root / "val").glob("*.png"))) == 4
    assert (shapes_root / ".complete").is_file()
    for split, n in (("train", 16), ("val", 4)):
        data = json.loads((shapes_root / "annotations" / f"instances_{split}.json").read_text())
        assert [(c["id"], c["name"]) for c in data["categories"]] == [
            (1, "circle"),
            (2, "square"),
            (3, "triangle"),
            (4, "ellipse"),
        ]
        assert [im["id"] for im in data["images"]] == list(range(1, n + 1))
        per_image = np.bincount([a["image_id"] for a in data["annotations"]], minlength=n + 1)[1:]
        assert per_image.min() >= 1 and per_image.max() <= 6
        assert all(a["iscrowd"] == 0 for a in data["annotations"])


def test_annotations_agree_with_pixels(shapes_root: Path) -> None:
    coco = COCO(str(shapes_root / "annotations" / "instances_train.json"))
    for image_id in coco.getImgIds():
        info = coco.imgs[image_id]
        image = _read_rgb(shapes_root / "train" / info["file_name"]).astype(np.float64)
        union = np.zeros((info["height"], info["width"]), dtype=np.int32)
        for ann in coco.imgToAnns[image_id]:
            mask = coco.annToMask(ann).astype(bool)
            # area and bbox describe the rasterized polygon exactly
            assert ann["area"] == mask.sum()
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
            # the polygon covers one flat-coloured object (plus mild noise), not the background
            assert image[mask].std(axis=0).max() < 10, (image_id, ann["id"])
            union += mask
        assert union.max() <= 1  # visible parts never overlap


def test_render_occlusion_rules() -> None:
    sizes = []
    for i in range(40):
        image, objects = render_shapes_image(np.random.default_rng([7, i]), 96)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert 1 <= len(objects) <= 6
        for k, obj in enumerate(objects):
            later = np.zeros_like(obj.mask)
            for other in objects[k + 1 :]:
                later |= other.mask
            np.testing.assert_array_equal(obj.visible, obj.mask & ~later)  # occluded by later ones
            assert obj.visible.sum() >= 0.5 * obj.mask.sum()  # mostly visible
            # pixels of the visible part carry the object's colour (up to noise)
            assert np.abs(image[obj.visible].mean(axis=0) - obj.color).max() < 4
            ys, xs = np.nonzero(obj.mask)
            sizes.append(max(np.ptp(xs), np.ptp(ys)) + 1)
    assert min(sizes) <= 12 and max(sizes) >= 40  # small to about half the image


def test_polygons_rasterize_back_exactly() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        mask = np.zeros((50, 50), dtype=np.uint8)
        cv2.circle(mask, tuple(int(v) for v in rng.integers(10, 40, 2)), int(rng.integers(2, 15)), 1, -1)
        cv2.rectangle(mask, tuple(int(v) for v in rng.integers(0, 50, 2)), (49, 49), 0, -1)  # cut
        if not mask.any():
            continue
        rle = mask_utils.merge(mask_utils.frPyObjects(mask_to_polygons(mask), 50, 50))
        np.testing.assert_array_equal(mask_utils.decode(rle), mask)


def test_deterministic_and_seed_dependent(shapes_root: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_shapes(again, **PARAMS)
    for rel in ("annotations/instances_train.json", "train/000005.png", "val/000003.png"):
        assert (again / rel).read_bytes() == (shapes_root / rel).read_bytes()
    other = tmp_path / "other"
    generate_shapes(other, **{**PARAMS, "seed": 4, "num_train": 2, "num_val": 1})
    assert (other / "train/000000.png").read_bytes() != (shapes_root / "train/000000.png").read_bytes()


def test_marker_skips_or_redoes(tmp_path: Path) -> None:
    root = tmp_path / "s"
    params = {"num_train": 3, "num_val": 1, "image_size": 48, "seed": 0}
    generate_shapes(root, **params)
    probe = root / "train" / "000000.png"
    probe.write_bytes(b"changed")
    generate_shapes(root, **params)  # same parameters: nothing is rewritten
    assert probe.read_bytes() == b"changed"

    (root / ".complete").unlink()  # an interrupted run: redone
    generate_shapes(root, **params)
    assert probe.read_bytes() != b"changed"

    generate_shapes(root, **{**params, "num_train": 2})  # new parameters: redone, stale files gone
    assert sorted(p.name for p in (root / "train").iterdir()) == ["000000.png", "000001.png"]
    assert json.loads((root / ".complete").read_text())["num_train"] == 2


def test_shapes_dataset(tmp_path: Path) -> None:
    ds = ShapesDataset(root=str(tmp_path / "s"), split="val", num_train=2, num_val=3, image_size=48, masks=True)
    assert len(ds) == 3 and ds.class_names == list(CLASS_NAMES) and ds.category_ids == [1, 2, 3, 4]
    coco = ds.coco_gt()
    s = ds[1]
    assert s.image.shape == (3, 48, 48)
    anns = coco.imgToAnns[s.image_id]
    assert s.targets.masks is not None and len(s.targets) == len(anns)
    for g, ann in enumerate(anns):
        np.testing.assert_array_equal(s.targets.masks[g].numpy(), coco.annToMask(ann))
        x, y, w, h = ann["bbox"]
        assert s.targets.boxes[g].tolist() == [x, y, x + w, y + h]
        assert s.targets.labels[g] == ann["category_id"] - 1
    with pytest.raises(ConfigError, match=r"split"):
        ShapesDataset(root=str(tmp_path / "s"), split="test")


def test_a_subset_of_the_shapes_in_other_colours(tmp_path: Path) -> None:
    import json

    import numpy as np

    from detkit.data.shapes import PALETTES
    from detkit.errors import ConfigError

    outputs = generate_shapes(tmp_path / "s", num_train=6, num_val=2, image_size=64, seed=1,
                              classes=["triangle", "circle"], palette="pastel")
    data = json.loads(outputs["train"].read_text())
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(1, "triangle"), (2, "circle")]
    assert {a["category_id"] for a in data["annotations"]} <= {1, 2} and data["annotations"]
    dataset = ShapesDataset(root=tmp_path / "s", split="train", num_train=6, num_val=2, image_size=64, seed=1,
                            classes=["triangle", "circle"], palette="pastel")
    assert dataset.class_names == ["triangle", "circle"]
    # every object is painted in a jittered pastel colour: its median pixel is near one of them
    sample = dataset[0]
    image = (sample.image * 255).permute(1, 2, 0).numpy()
    for box in sample.targets.boxes.round().int().tolist():
        x0, y0, x1, y1 = box
        patch = image[y0:y1, x0:x1].reshape(-1, 3)
        nearest = np.abs(PALETTES["pastel"][None] - np.median(patch, axis=0)[None, None]).max(-1).min()
        assert nearest < 60
    for bad in (["hexagon"], [], ["circle", "circle"]):
        with pytest.raises(ConfigError, match="shapes classes must be distinct names"):
            generate_shapes(tmp_path / "bad", num_train=1, num_val=0, classes=bad)
    with pytest.raises(ConfigError, match="shapes palette must be one of bright, pastel"):
        generate_shapes(tmp_path / "bad", num_train=1, num_val=0, palette="neon")
