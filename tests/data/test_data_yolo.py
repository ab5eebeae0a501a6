"""YoloDataset on hand-written YOLO folders: boxes, polygons and masks computed by hand, layouts, bad lines."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detkit.config import load_config
from detkit.data import YoloDataset
from detkit.data.yolo import label_path
from detkit.engine.build import build_dataset, dataset_from_path, plugins_for
from detkit.errors import ConfigError, DataError


def _image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 100, dtype=np.uint8))


def _labels(root: Path, rel: str, text: str) -> Path:
    path = root / "labels" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _dataset(root: Path, *, names: str = "[cat, dog]", extra: str = "") -> Path:
    """A YOLO dataset: train a.png (40x20, 3 objects), b.png (no label file), c.png (empty labels); val d.png."""
    _image(root / "images" / "train" / "a.png", 40, 20)
    _image(root / "images" / "train" / "b.png", 16, 16)
    _image(root / "images" / "train" / "c.png", 16, 16)
    _image(root / "images" / "val" / "d.png", 10, 10)
    _labels(
        root,
        "train/a.txt",
        "0 0.5 0.5 0.5 0.5\n"  # cx 20, cy 10, w 20, h 10 -> (10, 5, 30, 15)
        "1 0.125 0.25 0.25 0.5\n"  # cx 5, cy 5, w 10, h 10 -> (0, 0, 10, 10)
        "\n"
        "1 0.25 0.5 0.75 0.5 0.75 1.0 0.25 1.0\n",  # polygon (10,10) (30,10) (30,20) (10,20)
    )
    _labels(root, "train/c.txt", "")
    _labels(root, "val/d.txt", "0 0.95 0.5 0.2 0.2\n")  # 10x10: cx 9.5, w 2 -> x 8.5..10.5 (clipped to 10), y 4..6
    (root / "data.yaml").write_text(f"names: {names}\ntrain: images/train\nval: images/val\n{extra}")
    return root / "data.yaml"


def test_label_path_follows_the_ultralytics_rule() -> None:
    sep = os.sep
    assert label_path(f"{sep}d{sep}images{sep}train{sep}a.jpg") == Path(f"{sep}d{sep}labels{sep}train{sep}a.txt")
    # the last images component is replaced; a path without one keeps its folder
    assert label_path(f"{sep}images{sep}x{sep}images{sep}a.b.png") == Path(
        f"{sep}images{sep}x{sep}labels{sep}a.b.txt"
    )
    assert label_path(f"{sep}d{sep}a.jpg") == Path(f"{sep}d{sep}a.txt")


def test_boxes_polygons_and_background_by_hand(tmp_path: Path) -> None:
    ds = YoloDataset(yaml=_dataset(tmp_path), split="train")
    assert ds.class_names == ["cat", "dog"] and ds.category_ids == [1, 2]
    assert len(ds) == 3 and ds.image_ids == [1, 2, 3]
    assert [ds.image_path(i).name for i in range(3)] == ["a.png", "b.png", "c.png"]
    a, b, c = ds[0], ds[1], ds[2]
    assert a.file_name == "a.png" and a.image_id == 1 and a.image_size == (20, 40)
    assert torch.equal(a.targets.boxes, torch.tensor([[10.0, 5.0, 30.0, 15.0], [0.0, 0.0, 10.0, 10.0],
                                                      [10.0, 10.0, 30.0, 20.0]]))
    assert a.targets.labels.tolist() == [0, 1, 1] and a.targets.masks is None
    assert a.targets.iscrowd is not None and not a.targets.iscrowd.any()
    for background in (b, c):  # no label file; an empty one
        assert background.targets.boxes.shape == (0, 4) and background.targets.labels.shape == (0,)

    val = YoloDataset(yaml=tmp_path / "data.yaml", split="val")
    assert val[0].targets.boxes.tolist() == [[8.5, 4.0, 10.0, 6.0]]  # clipped at the right edge


def test_masks_and_coco_gt_by_hand(tmp_path: Path) -> None:
    ds = YoloDataset(yaml=_dataset(tmp_path), split="train", masks=True)
    masks = ds[0].targets.masks
    assert masks is not None and masks.shape == (3, 20, 40) and masks.dtype == torch.uint8
    expected = np.zeros((3, 20, 40), dtype=np.uint8)
    expected[0, 5:15, 10:30] = 1  # a box line's mask is its rectangle
    expected[1, 0:10, 0:10] = 1
    expected[2, 10:20, 10:30] = 1  # the polygon
    assert np.array_equal(masks.numpy(), expected)

    coco = ds.coco_gt()
    assert coco.imgs[1] == {"id": 1, "file_name": "a.png", "width": 40, "height": 20}
    assert sorted(coco.imgs) == [1, 2, 3]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [ann["bbox"] for ann in anns] == [[10.0, 5.0, 20.0, 10.0], [0.0, 0.0, 10.0, 10.0], [10.0, 10.0, 20.0, 10.0]]
    assert [ann["category_id"] for ann in anns] == [1, 2, 2] and all(ann["iscrowd"] == 0 for ann in anns)
    assert anns[2]["segmentation"] == [[10.0, 10.0, 30.0, 10.0, 30.0, 20.0, 10.0, 20.0]]
    for ann, mask in zip(anns, expected):
        assert np.array_equal(coco.annToMask(ann), mask) and ann["area"] == mask.sum()
    # without masks only the polygon line carries a segmentation
    plain = YoloDataset(yaml=tmp_path / "data.yaml", split="train").coco_gt()
    assert ["segmentation" in ann for ann in plain.loadAnns(plain.getAnnIds(imgIds=[1]))] == [False, False, True]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.5", "has 4 values; expected 5"),
        ("0 0.5 0.5 0.5 0.5 0.5", "has 6 values"),
        ("0 0.1 0.1 0.2 0.1 0.2 0.2 0.3", "has 8 values"),
        ("0 0.5 half 0.5 0.5", "not a number"),
        ("2 0.5 0.5 0.5 0.5", "class 2 is not a class index 0..1"),
        ("-1 0.5 0.5 0.5 0.5", "class -1 is not a class index"),
        ("0.5 0.5 0.5 0.5 0.5", "class 0.5 is not a class index"),
        ("0 120 45 30 20", "coordinate 120 is not normalized"),
        ("0 0.5 0.5 nan 0.5", "coordinate nan is not normalized"),
    ],
)
def test_bad_line_names_label_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    _dataset(tmp_path)
    _labels(tmp_path, "train/c.txt", f"1 0.5 0.5 0.1 0.1\n\n{line}\n")
    with pytest.raises(DataError, match=rf"label file '.*labels[/\\]train[/\\]c\.txt' line 3.*{message}"):
        YoloDataset(yaml=tmp_path / "data.yaml", split="train")


def test_zero_size_boxes_are_dropped_with_one_warning(tmp_path: Path) -> None:
    _dataset(tmp_path)
    _labels(tmp_path, "train/c.txt", "0 0.5 0.5 0 0.1\n1 0.5 0.5 0.25 0.25\n0 0.2 0.2 0.2 0.2 0.2 0.2\n")
    with pytest.warns(UserWarning, match=r"dropped 2 object\(s\) with an empty box"):
        ds = YoloDataset(yaml=tmp_path / "data.yaml", split="train")
    assert ds[2].targets.boxes.tolist() == [[6.0, 6.0, 10.0, 10.0]]


def test_names_as_mapping_nc_path_and_list_files(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _dataset(root)
    (root / "data.yaml").unlink()
    # a list file: one relative path (to the list's folder), one absolute, a missing label file
    (root / "train.txt").write_text(f"images/train/a.png\n\n{root / 'images' / 'train' / 'b.png'}\n")
    yaml_file = tmp_path / "elsewhere" / "data.yaml"
    yaml_file.parent.mkdir()
    yaml_file.write_text(
        "path: ../set\nnc: 2\nnames: {0: cat, 1: dog}\ntrain: train.txt\nval: [images/val, images/train/c.png]\n"
    )
    train = YoloDataset(yaml=yaml_file, split="train")
    assert train.class_names == ["cat", "dog"] and [train.image_path(i).name for i in range(2)] == ["a.png", "b.png"]
    assert train[0].targets.labels.tolist() == [0, 1, 1] and train[0].file_name == "images/train/a.png"
    val = YoloDataset(yaml=yaml_file, split="val")
    assert [val.image_path(i).name for i in range(2)] == ["c.png", "d.png"]

    yaml_file.write_text("names: {0: cat, 2: dog}\ntrain: x\n")
    with pytest.raises(DataError, match=r"'names' must number the classes 0\.\.1 without gaps"):
        YoloDataset(yaml=yaml_file)
    yaml_file.write_text("nc: 3\nnames: [cat, dog]\ntrain: x\n")
    with pytest.raises(DataError, match="nc is 3 but 'names' has 2 classes"):
        YoloDataset(yaml=yaml_file)
    yaml_file.write_text("path: /no/such/folder\nnames: [cat]\ntrain: x\n")
    with pytest.raises(DataError, match="is not a folder; fix it, or remove 'path'"):
        YoloDataset(yaml=yaml_file)
    yaml_file.write_text("path: ../set\nnames: [cat]\ntrain: images/train\n")
    with pytest.raises(DataError, match=r"has no split 'val'; it lists: train"):
        YoloDataset(yaml=yaml_file, split="val")
    yaml_file.write_text("path: ../set\nnames: [cat]\ntrain: images/nothing\n")
    with pytest.raises(DataError, match=r"images[/\\]nothing' does not exist"):
        YoloDataset(yaml=yaml_file)
    yaml_file.write_text("train: images/train\n")
    with pytest.raises(DataError, match="has no 'names'"):
        YoloDataset(yaml=yaml_file)


def test_root_without_yaml_and_missing_labels_warning(tmp_path: Path) -> None:
    _dataset(tmp_path)
    (tmp_path / "data.yaml").unlink()
    with pytest.raises(DataError, match=r"neither data\.yaml nor classes\.txt"):
        YoloDataset(root=tmp_path)
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    ds = YoloDataset(root=tmp_path, split="train")
    assert ds.class_names == ["cat", "dog"] and len(ds) == 3 and ds[0].targets.labels.tolist() == [0, 1, 1]
    with pytest.raises(DataError, match=r"no images/test/"):
        YoloDataset(root=tmp_path, split="test")
    with pytest.raises(ConfigError, match=r"root .* or yaml"):
        YoloDataset(root=tmp_path, yaml=tmp_path / "data.yaml")
    # labels in the wrong place: every image is background, and a warning says where they were expected
    os.rename(tmp_path / "labels", tmp_path / "labelz")
    with pytest.warns(UserWarning, match=r"none of the 3 images has a label file \(the first would be '.*a\.txt'\)"):
        YoloDataset(root=tmp_path, split="train")


def test_config_resolves_yaml_and_root_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dataset(tmp_path / "set")
    config_file = tmp_path / "cfg" / "run.yaml"
    config_file.parent.mkdir()
    config_file.write_text(
        "data:\n  train: {name: yolo, yaml: ../set/data.yaml, split: train, masks: true}\n"
        "  val: {name: yolo, root: ../set, split: val}\n"
    )
    monkeypatch.chdir(tmp_path / "set" / "images")  # anywhere else
    config = load_config(config_file)
    assert config["data"]["train"]["yaml"] == str(tmp_path / "set" / "data.yaml")
    assert config["data"]["val"]["root"] == str(tmp_path / "set")
    plugins = plugins_for(config)
    train = build_dataset(config, "train", plugins)
    val = build_dataset(config, "val", plugins)
    assert isinstance(train, YoloDataset) and len(train) == 3 and train.masks
    assert isinstance(val, YoloDataset) and len(val) == 1


def test_dataset_from_path_takes_a_data_yaml(tmp_path: Path) -> None:
    yaml_file = _dataset(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(dataset_from_path(str(yaml_file))) == 1  # default split: val
        assert len(dataset_from_path(str(yaml_file), split="train")) == 3
        assert len(dataset_from_path(str(tmp_path), split="train")) == 3  # a folder holding data.yaml
    with pytest.raises(DataError, match="no split 'test'"):
        dataset_from_path(str(yaml_file), split="test")
    (tmp_path / "data.yaml").unlink()
    with pytest.raises(DataError, match=r"neither a Pascal VOC root .* nor a YOLO dataset"):
        dataset_from_path(str(tmp_path))
