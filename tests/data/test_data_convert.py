"""``detkit data convert``: round trips through YOLO on real and generated data, against the source readers."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import yaml
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from detkit.cli import main
from detkit.data import CocoDataset, ViaDataset, VocDataset, YoloDataset, generate_shapes
from detkit.data.convert import merge_polygons
from detkit.errors import DataError


def _coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _convert(*args: str) -> None:
    assert main(["-q", "data", "convert", *args]) == 0


def _pairs(original: COCO, back: COCO) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(image, original annotation, converted annotation) of every non-crowd object, matched by file and order."""
    by_name = {im["file_name"]: im["id"] for im in back.dataset["images"]}
    assert sorted(by_name) == sorted(im["file_name"] for im in original.dataset["images"])
    pairs = []
    for image in original.dataset["images"]:
        kept = [a for a in original.imgToAnns[image["id"]] if not a["iscrowd"]]
        converted = back.imgToAnns[by_name[image["file_name"]]]
        assert len(kept) == len(converted), image["file_name"]
        pairs += [(image, a, b) for a, b in zip(kept, converted)]
    return pairs


def _check_round_trip(original: COCO, back: COCO) -> dict[str, float]:
    """Every box within 1 px and every class kept; polygons as polygons. Returns the worst errors."""
    names_a = {c["id"]: c["name"] for c in original.dataset["categories"]}
    names_b = {c["id"]: c["name"] for c in back.dataset["categories"]}
    assert sorted(names_a.values()) == sorted(names_b.values())  # every class, used or not
    worst = {"box": 0.0, "vertex": 0.0, "multi_iou": 1.0}
    for _, a, b in _pairs(original, back):
        assert names_a[a["category_id"]] == names_b[b["category_id"]]
        worst["box"] = max(worst["box"], float(np.abs(np.subtract(a["bbox"], b["bbox"])).max()))
        parts = a.get("segmentation")
        if isinstance(parts, list) and parts:
            assert len(b["segmentation"]) == 1  # one polygon per YOLO line
            if len(parts) == 1:
                worst["vertex"] = max(worst["vertex"], float(np.abs(np.subtract(parts[0], b["segmentation"][0])).max()))
            else:
                ma, mb = original.annToMask(a), back.annToMask(b)
                worst["multi_iou"] = min(worst["multi_iou"], float((ma & mb).sum() / (ma | mb).sum()))
    assert worst["box"] <= 1.0 and worst["vertex"] <= 0.01 and worst["multi_iou"] >= 0.99, worst
    return worst


def test_tiny_coco_to_yolo_and_back(shared_data: Callable[[str], Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    annotations = shared_data("tiny_coco") / "annotations"
    for split in ("train2017", "val2017"):
        _convert("--from", "coco", "--to", "yolo", str(annotations / f"instances_{split}.json"), str(tmp_path / "yolo"))
    out, err = capsys.readouterr()
    assert err.count("dropped 5 crowd region(s) (iscrowd=1): YOLO labels have no crowd or ignore flag") == 2
    assert "coco -> yolo (val2017): 50 images, 377 objects (377 polygons); 5 crowd regions dropped" in out
    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert data["train"] == "images/train2017" and data["val"] == "images/val2017" and data["nc"] == 80
    assert os.path.islink(tmp_path / "yolo" / "images" / "val2017" / "000000006818.jpg")  # linked, not copied

    _convert("--from", "yolo", "--to", "coco", str(tmp_path / "yolo" / "data.yaml"), str(tmp_path / "back"))
    for split, back in (("train2017", "train"), ("val2017", "val")):
        original = _coco(annotations / f"instances_{split}.json")
        converted = _coco(tmp_path / "back" / "annotations" / f"instances_{back}.json")
        worst = _check_round_trip(original, converted)
        assert worst["box"] < 0.001 and worst["vertex"] == 0.0  # 6 decimals of a 640 px side, read back rounded
    # the converted COCO file loads with its images where CocoDataset looks by default
    ds = CocoDataset(ann_file=tmp_path / "back" / "annotations" / "instances_val.json", masks=True)
    assert ds[0].targets.masks is not None and ds.image_path(0).resolve().parent.name == "val2017"


def test_generated_shapes_round_trip_keeps_boxes_classes_and_masks(tmp_path: Path) -> None:
    outputs = generate_shapes(tmp_path / "shapes", num_train=12, num_val=0, image_size=64, seed=3)
    _convert("--from", "coco", "--to", "yolo", str(outputs["train"]), str(tmp_path / "yolo"))
    _convert("--from", "yolo", "--to", "coco", str(tmp_path / "yolo"), str(tmp_path / "back"))
    original = _coco(outputs["train"])
    _check_round_trip(original, _coco(tmp_path / "back" / "annotations" / "instances_train.json"))
    # the YOLO dataset's masks are the painted pixels, as the COCO reader gives them
    source = CocoDataset(ann_file=outputs["train"], masks=True)
    yolo = YoloDataset(yaml=tmp_path / "yolo" / "data.yaml", split="train", masks=True)
    assert len(yolo) == len(source) == 12 and yolo.class_names == source.class_names
    for i in range(len(source)):
        a, b = source[i].targets, yolo[i].targets
        assert a.masks is not None and b.masks is not None
        assert b.labels.tolist() == a.labels.tolist()
        assert np.abs((b.boxes - a.boxes).numpy()).max() <= 1.0
        for ma, mb in zip(a.masks.numpy().astype(bool), b.masks.numpy().astype(bool)):
            assert (ma & mb).sum() / (ma | mb).sum() >= 0.99  # equal, but for a bridge between two parts


def test_voc_bccd_to_yolo_and_back(shared_data: Callable[[str], Path], tmp_path: Path) -> None:
    root = shared_data("BCCD")
    _convert("--from", "voc", "--to", "yolo", str(root), str(tmp_path / "yolo"), "--split", "test")
    _convert("--from", "yolo", "--to", "coco", str(tmp_path / "yolo" / "data.yaml"), str(tmp_path / "back"))
    voc = VocDataset(root=root, split="test")
    back = CocoDataset(ann_file=tmp_path / "back" / "annotations" / "instances_test.json")
    assert back.class_names == voc.class_names and len(back) == len(voc) == 72
    coco_voc, coco_back = voc.coco_gt(), back.coco_gt()
    worst = 0.0
    for _, a, b in _pairs(coco_voc, coco_back):
        assert a["category_id"] == b["category_id"]  # VOC's ids 1..K survive: same names, same order
        worst = max(worst, float(np.abs(np.subtract(a["bbox"], b["bbox"])).max()))
    assert worst < 0.001


def test_via_balloon_to_yolo_keeps_polygons_and_masks(shared_data: Callable[[str], Path], tmp_path: Path) -> None:
    root = shared_data("balloon") / "val"
    _convert("--from", "via", "--to", "yolo", str(root), str(tmp_path / "yolo"))
    assert yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())["val"] == "images/val"
    via = ViaDataset(root=root, masks=True)
    yolo = YoloDataset(yaml=tmp_path / "yolo" / "data.yaml", split="val", masks=True)
    assert len(yolo) == len(via) == 13 and yolo.class_names == via.class_names
    worst = _check_round_trip(via.coco_gt(), yolo.coco_gt())
    assert worst["box"] < 0.01
    for i in range(3):  # the masks themselves, on a few (large) images: pixel for pixel
        a, b = via[i].targets, yolo[i].targets
        assert torch.equal(a.labels, b.labels) and a.masks is not None and b.masks is not None
        assert torch.equal(a.masks, b.masks)


def test_merge_polygons_covers_the_parts() -> None:
    parts = [[2, 2, 10, 2, 10, 10, 2, 10], [20, 4, 28, 4, 28, 12, 20, 12], [4, 20, 12, 20, 8, 28]]
    merged = merge_polygons([[float(v) for v in p] for p in parts])
    assert len(merged) == sum(len(p) for p in parts) + 2 * 2 * 2  # each bridge adds its two ends twice
    union = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(parts, 32, 32))).astype(bool)
    joined = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([merged], 32, 32))).astype(bool)
    assert (joined & union).sum() == union.sum()  # every pixel of the parts
    assert (joined & ~union).sum() <= 2 * 12  # and at most a pixel line along each bridge


def _tiny_coco(root: Path, *, crowd: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "a.png"), np.zeros((20, 40, 3), np.uint8))
    anns = [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [10, 5, 20, 10], "iscrowd": 0}]
    if crowd:
        rle = mask_utils.encode(np.asfortranarray(np.ones((20, 40), np.uint8)))
        rle["counts"] = rle["counts"].decode()
        anns.append({"id": 2, "image_id": 7, "category_id": 5, "bbox": [0, 0, 40, 20], "iscrowd": 1,
                     "segmentation": rle})
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 20}],
        "annotations": anns,
        "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}],
    }
    (root / "instances_train.json").write_text(json.dumps(data))
    return root / "instances_train.json"


def test_box_line_written_by_hand_computation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann = _tiny_coco(tmp_path / "src", crowd=True)
    _convert("--from", "coco", "--to", "yolo", str(ann), str(tmp_path / "out"))
    assert "dropped 1 crowd region" in capsys.readouterr().err
    # bbox [10, 5, 20, 10] in a 40x20 image: centre (20, 10) -> (0.5, 0.5), size (0.5, 0.5); class cat = 0
    assert (tmp_path / "out" / "labels" / "train" / "a.txt").read_text() == "0 0.500000 0.500000 0.500000 0.500000\n"
    assert yaml.safe_load((tmp_path / "out" / "data.yaml").read_text()) == {
        "train": "images/train", "nc": 2, "names": {0: "cat", 1: "dog"}
    }


def test_existing_output_overwrite_copy_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann = _tiny_coco(tmp_path / "src")
    out = tmp_path / "out"
    _convert("--from", "coco", "--to", "yolo", str(ann), str(out))
    assert main(["data", "convert", "--from", "coco", "--to", "yolo", str(ann), str(out)]) == 2
    assert "already exists (an earlier conversion?); pass --overwrite" in capsys.readouterr().err
    _convert("--from", "coco", "--to", "yolo", str(ann), str(out), "--overwrite", "--copy-images")
    image = out / "images" / "train" / "a.png"
    assert image.is_file() and not image.is_symlink()
    # another split joins data.yaml; a split whose role cannot be told, or other classes, are refused
    _convert("--from", "coco", "--to", "yolo", str(ann), str(out), "--split", "val")
    assert yaml.safe_load((out / "data.yaml").read_text())["val"] == "images/val"
    assert main(["data", "convert", "--from", "coco", "--to", "yolo", str(ann), str(out), "--split", "extra"]) == 2
    assert "cannot tell whether split 'extra' is for training, validation or testing" in capsys.readouterr().err
    other = json.loads(ann.read_text())
    other["categories"][1]["name"] = "bird"
    (tmp_path / "src" / "instances_test.json").write_text(json.dumps(other))
    with pytest.raises(DataError, match=r"names the classes \['cat', 'dog'\], this source \['cat', 'bird'\]"):
        from detkit.data.convert import convert

        convert("coco", "yolo", tmp_path / "src" / "instances_test.json", out, progress=False)
    assert main(["data", "convert", "--from", "voc", "--to", "coco", str(tmp_path), str(out), "--images", "x"]) == 2
    assert "--images is for COCO sources" in capsys.readouterr().err
    assert main(["data"]) == 2  # the group alone: its help, a usage error


def test_coco_to_coco_keeps_ids_crowd_and_links_images(tmp_path: Path) -> None:
    ann = _tiny_coco(tmp_path / "src", crowd=True)
    _convert("--from", "coco", "--to", "coco", str(ann), str(tmp_path / "out"))
    data = json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())
    assert [im["id"] for im in data["images"]] == [7] and [c["id"] for c in data["categories"]] == [5, 9]
    assert [a["iscrowd"] for a in data["annotations"]] == [0, 1]
    assert (tmp_path / "out" / "train" / "a.png").resolve() == (tmp_path / "src" / "a.png").resolve()


def test_yolo_copy_of_shapes_trains_and_evaluates_through_the_cli(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    outputs = generate_shapes(tmp_path / "shapes", num_train=8, num_val=4, image_size=64)
    for split in ("train", "val"):
        _convert("--from", "coco", "--to", "yolo", str(outputs[split]), str(tmp_path / "yolo"))
    config = tmp_path / "yolo_shapes.yaml"
    config.write_text(
        "base: detkit:shapes_faster_rcnn.yaml\n"
        "data:\n"
        "  train: {name: yolo, yaml: yolo/data.yaml, split: train}\n"
        "  val: {name: yolo, yaml: yolo/data.yaml, split: val}\n"
    )
    run = tmp_path / "run"
    assert main(["-q", "train", str(config), "train.max_iters=2", "train.batch_size=2", "train.max_minutes=null",
                 f"output.dir={run}"]) == 0
    assert main(["-q", "eval", "--weights", str(run / "best.pt"), "--data", str(tmp_path / "yolo" / "data.yaml"),
                 "--split", "val", "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["bbox"]["AP"] <= 1.0 and set(metrics["bbox"]["per_class"]) <= set(
        ["circle", "square", "triangle", "ellipse"]
    )
    assert "wrote" in capsys.readouterr().out
