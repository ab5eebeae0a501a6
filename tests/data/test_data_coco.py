"""CocoDataset against pycocotools on the same files, plus malformed-input checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from detkit.data.coco import CocoDataset, default_images_dir
from detkit.errors import DataError

# --------------------------------------------------------------------------- helpers


def _write_image(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, dtype=np.uint8)).save(path)


def _small_coco(root: Path, **changes: Any) -> Path:
    """root/annotations/instances_mini.json + root/mini/{1,2,3}.png (20x30, HxW)."""
    data: dict[str, Any] = {
        "images": [
            {"id": 10, "file_name": "a.png", "height": 20, "width": 30},
            {"id": 5, "file_name": "b.png", "height": 20, "width": 30},
            {"id": 7, "file_name": "c.png", "height": 20, "width": 30},
        ],
        "categories": [{"id": 9, "name": "nine"}, {"id": 2, "name": "two"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 9, "bbox": [1, 2, 3, 4], "iscrowd": 0,
             "area": 12, "segmentation": [[1, 2, 4, 2, 4, 6, 1, 6]]},
            {"id": 2, "image_id": 10, "category_id": 2, "bbox": [25, 15, 10, 10], "iscrowd": 0,
             "area": 100, "segmentation": [[25, 15, 30, 15, 30, 20, 25, 20]]},
            {"id": 3, "image_id": 10, "category_id": 2, "bbox": [0, 0, 30, 20], "iscrowd": 1,
             "area": 40, "segmentation": {"size": [20, 30], "counts": [0, 20, 20, 20, 540]}},
            {"id": 4, "image_id": 5, "category_id": 2, "bbox": [3, 3, 0, 5], "iscrowd": 0,
             "area": 0, "segmentation": [[3, 3, 3, 8, 3, 8]]},
            {"id": 5, "image_id": 5, "category_id": 9, "bbox": [40, 3, 5, 5], "iscrowd": 0,
             "area": 25, "segmentation": [[40, 3, 45, 3, 45, 8]]},
        ],
    }  # fmt: skip
    data.update(changes)
    ann_file = root / "annotations" / "instances_mini.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(data))
    for img in data["images"]:
        _write_image(root / "mini" / img["file_name"], img["height"], img["width"])
    return ann_file


# --------------------------------------------------------------------------- small file


def test_labels_boxes_crowd_and_empty_box_warning(tmp_path: Path) -> None:
    ann_file = _small_coco(tmp_path)
    with pytest.warns(UserWarning, match=r"dropped 2 annotation"):
        ds = CocoDataset(ann_file=str(ann_file))
    assert ds.images_dir == tmp_path / "mini"
    # labels follow sorted category ids: 2 -> 0, 9 -> 1
    assert ds.category_ids == [2, 9] and ds.class_names == ["two", "nine"]
    assert ds.image_ids == [5, 7, 10] and len(ds) == 3

    s = ds[ds.image_ids.index(10)]
    assert s.image_id == 10 and s.file_name == "a.png" and s.image.shape == (3, 20, 30)
    # [x, y, w, h] -> xyxy, clipped to the 30x20 image
    torch.testing.assert_close(s.targets.boxes, torch.tensor([[1.0, 2, 4, 6], [25, 15, 30, 20], [0, 0, 30, 20]]))
    assert s.targets.labels.tolist() == [1, 0, 0]
    assert s.targets.iscrowd.tolist() == [False, False, True]
    assert s.targets.masks is None

    # image 5: a zero-width box and a box wholly outside the image are dropped
    s5 = ds[0]
    assert s5.image_id == 5 and len(s5.targets) == 0 and s5.targets.boxes.shape == (0, 4)


def test_masks_polygon_and_crowd_rle_match_pycocotools(tmp_path: Path) -> None:
    ann_file = _small_coco(tmp_path)
    with pytest.warns(UserWarning):
        ds = CocoDataset(ann_file=ann_file, masks=True)
    masks = ds[ds.image_ids.index(10)].targets.masks
    assert masks is not None and masks.shape == (3, 20, 30) and masks.dtype == torch.uint8
    coco = COCO(str(ann_file))
    for g, ann_id in enumerate([1, 2, 3]):
        np.testing.assert_array_equal(masks[g].numpy(), coco.annToMask(coco.anns[ann_id]))
    # the uncompressed crowd RLE covers the first column (20 px) and the third
    assert int(masks[2].sum()) == 40 and masks[2][:, 0].all() and masks[2][:, 2].all()
    assert ds[0].targets.masks.shape == (0, 20, 30)


def test_skip_empty(tmp_path: Path) -> None:
    ann_file = _small_coco(tmp_path)
    with pytest.warns(UserWarning):
        ds = CocoDataset(ann_file=ann_file, skip_empty=True)
    assert ds.image_ids == [10]


def test_explicit_images_folder_and_paths(tmp_path: Path) -> None:
    ann_file = _small_coco(tmp_path)
    with pytest.warns(UserWarning):
        ds = CocoDataset(ann_file=ann_file, images=str(tmp_path / "mini"))
    assert ds.image_path(0) == tmp_path / "mini" / "b.png"
    with pytest.raises(DataError, match=r"elsewhere"):
        CocoDataset(ann_file=ann_file, images=str(tmp_path / "elsewhere"))


def test_coco_gt_is_the_file(tmp_path: Path) -> None:
    ann_file = _small_coco(tmp_path)
    with pytest.warns(UserWarning):
        ds = CocoDataset(ann_file=ann_file)
    gt = ds.coco_gt()
    reference = COCO(str(ann_file))
    assert sorted(gt.getImgIds()) == sorted(reference.getImgIds())
    assert sorted(gt.getAnnIds()) == sorted(reference.getAnnIds())
    assert gt.anns[1]["bbox"] == reference.anns[1]["bbox"]


def test_default_images_dir(tmp_path: Path) -> None:
    (tmp_path / "val2017").mkdir()
    assert default_images_dir(tmp_path / "annotations" / "instances_val2017.json") == tmp_path / "val2017"
    (tmp_path / "images" / "train2017").mkdir(parents=True)
    assert (
        default_images_dir(tmp_path / "annotations" / "instances_train2017.json") == tmp_path / "images" / "train2017"
    )
    assert default_images_dir(tmp_path / "labels" / "data.json") == tmp_path / "labels"


# --------------------------------------------------------------------------- errors


def test_missing_and_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothere.json.*does not exist"):
        CocoDataset(ann_file=tmp_path / "nothere.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad.json.*not valid JSON"):
        CocoDataset(ann_file=bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match=r"bad.json.*categories"):
        CocoDataset(ann_file=bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bbox": [1, 2, 3]}, "annotation id 1 has bad bbox"),
        ({"bbox": [1, 2, "x", 4]}, "annotation id 1 has bad bbox"),
        ({"bbox": None}, "annotation id 1 has bad bbox"),
        ({"category_id": 4}, "annotation id 1 has unknown category_id 4"),
        ({"image_id": 99}, "annotation id 1 refers to unknown image_id 99"),
    ],
)
def test_bad_annotation_record_names_its_id(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    ann = {
        "id": 1,
        "image_id": 10,
        "category_id": 9,
        "bbox": [1, 2, 3, 4],
        "iscrowd": 0,
        "area": 12,
    }
    ann.update(change)
    ann_file = _small_coco(tmp_path, annotations=[ann])
    with pytest.raises(DataError, match=message) as info:
        CocoDataset(ann_file=ann_file)
    assert "instances_mini.json" in str(info.value)


def test_missing_and_corrupt_image_raise_on_load(tmp_path: Path) -> None:
    ann_file = _small_coco(tmp_path)
    (tmp_path / "mini" / "b.png").unlink()
    (tmp_path / "mini" / "c.png").write_text("not an image")
    with pytest.warns(UserWarning):
        ds = CocoDataset(ann_file=ann_file)
    with pytest.raises(DataError, match=r"b.png.*does not exist"):
        ds[0]
    with pytest.raises(DataError, match=r"c.png"):
        ds[1]
    assert ds[2].image_id == 10  # the others still load


def test_image_size_mismatch(tmp_path: Path) -> None:
    ann_file = _small_coco(tmp_path)
    _write_image(tmp_path / "mini" / "a.png", 21, 30)
    with pytest.warns(UserWarning):
        ds = CocoDataset(ann_file=ann_file)
    with pytest.raises(DataError, match=r"a.png.*21x30.*20x30"):
        ds[2]


def test_bad_segmentation_names_annotation(tmp_path: Path) -> None:
    ann = {"id": 77, "image_id": 10, "category_id": 9, "bbox": [1, 2, 3, 4], "iscrowd": 0,
           "area": 12, "segmentation": {"size": [20, 30], "counts": 5}}  # fmt: skip
    ann_file = _small_coco(tmp_path, annotations=[ann])
    ds = CocoDataset(ann_file=ann_file, masks=True)
    with pytest.raises(DataError, match=r"annotation id 77"):
        ds[ds.image_ids.index(10)]


# --------------------------------------------------------------------------- real data


def _reference_targets(coco: COCO, image_id: int, cat_ids: list[int]) -> tuple[np.ndarray, list[int], list[bool]]:
    """Slow reference: the usable annotations of an image, read straight from pycocotools."""
    img = coco.imgs[image_id]
    boxes, labels, crowd = [], [], []
    for ann in coco.imgToAnns[image_id]:
        x, y, w, h = ann["bbox"]
        if w <= 0 or h <= 0:
            continue
        x1, y1 = min(max(x, 0), img["width"]), min(max(y, 0), img["height"])
        x2, y2 = min(max(x + w, 0), img["width"]), min(max(y + h, 0), img["height"])
        boxes.append([x1, y1, x2, y2])
        labels.append(cat_ids.index(ann["category_id"]))
        crowd.append(bool(ann["iscrowd"]))
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels, crowd


def test_tiny_coco_matches_pycocotools(shared_data: Any) -> None:
    root = shared_data("tiny_coco")
    ann_file = root / "annotations" / "instances_val2017.json"
    ds = CocoDataset(ann_file=str(ann_file), masks=True)
    coco = COCO(str(ann_file))
    assert ds.images_dir == root / "val2017"
    assert ds.category_ids == sorted(coco.getCatIds())
    assert ds.class_names == [coco.cats[c]["name"] for c in ds.category_ids]
    assert ds.image_ids == sorted(coco.getImgIds())
    for i in range(0, len(ds), 5):  # every fifth image keeps this fast
        s = ds[i]
        boxes, labels, crowd = _reference_targets(coco, s.image_id, ds.category_ids)
        np.testing.assert_allclose(s.targets.boxes.numpy(), boxes, rtol=0, atol=1e-4)
        assert s.targets.labels.tolist() == labels
        assert s.targets.iscrowd.tolist() == crowd
        info = coco.imgs[s.image_id]
        assert s.image.shape == (3, info["height"], info["width"])
        anns = [a for a in coco.imgToAnns[s.image_id] if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        assert s.targets.masks is not None and len(s.targets.masks) == len(anns)
        for g, ann in enumerate(anns):
            np.testing.assert_array_equal(s.targets.masks[g].numpy(), coco.annToMask(ann))
    # crowd RLEs are decoded too
    crowd_index = next(i for i, img in enumerate(ds.image_ids) if any(a["iscrowd"] for a in coco.imgToAnns[img]))
    s = ds[crowd_index]
    crowd_anns = [a for a in coco.imgToAnns[s.image_id] if a["iscrowd"]]
    assert s.targets.iscrowd.any()
    decoded = mask_utils.decode(coco.annToRLE(crowd_anns[0]))
    assert any(np.array_equal(m.numpy(), decoded) for m in s.targets.masks)
