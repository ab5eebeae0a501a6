"""VocDataset on a hand-written VOC folder and on the real BCCD data."""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from detkit.data.voc import VocDataset
from detkit.errors import DataError


def _xml(filename: str, size: tuple[int, int] | None, objects: list[tuple[str, Any, int]]) -> str:
    """objects: (name, (xmin, ymin, xmax, ymax) as written, difficult)."""
    parts = [f"<annotation><filename>{filename}</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, box, difficult in objects:
        xmin, ymin, xmax, ymax = box
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
            f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
            "</bndbox></object>"
        )
    parts.append("</annotation>")
    return "".join(parts)


def _make_voc(root: Path, records: dict[str, tuple[tuple[int, int] | None, list[Any]]]) -> Path:
    """A VOC folder with one 'trainval' split listing ``records`` (id -> (size, objects))."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, (size, objects) in records.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml(f"{image_id}.jpg", size, objects))
        w, h = size or (40, 30)
        Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(records) + "\n")
    return root


def _tiny(root: Path) -> Path:
    return _make_voc(
        root,
        {
            "img_a": ((40, 30), [("dog", (1, 1, 10, 20), 0), ("cat", (5.5, 6, 12.5, 30), 1)]),
            "img_b": ((40, 30), [("cat", (30, 2, 45, 10), 0)]),  # reaches outside: clipped
            "img_c": (
                (40, 30),
                [("dog", (7, 7, 7, 7), 0), ("dog", (3, 4, 8, 9), 0)],
            ),  # a stray click
        },
    )


def test_boxes_convert_from_one_based_inclusive(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"clipped 1 box.*dropped 1 box"):
        ds = VocDataset(root=str(_tiny(tmp_path)))
    assert ds.class_names == ["cat", "dog"]  # sorted names found in the split
    assert ds.category_ids == [1, 2] and ds.image_ids == [1, 2, 3] and len(ds) == 3
    a = ds[0]
    assert a.image.shape == (3, 30, 40) and a.image_id == 1 and a.file_name == "img_a.jpg"
    # xmin=1..xmax=10 (inclusive, 1-based) covers pixel columns 0..9 -> [0, 10)
    torch.testing.assert_close(a.targets.boxes, torch.tensor([[0.0, 0, 10, 20], [4.5, 5, 12.5, 30]]))
    assert a.targets.labels.tolist() == [1, 0]
    assert a.targets.iscrowd.tolist() == [False, False]  # use_difficult=True keeps difficult
    torch.testing.assert_close(ds[1].targets.boxes, torch.tensor([[29.0, 1, 40, 10]]))
    torch.testing.assert_close(ds[2].targets.boxes, torch.tensor([[2.0, 3, 8, 9]]))
    assert ds.image_path(2) == tmp_path / "JPEGImages" / "img_c.jpg"


def test_box_covers_exactly_the_annotated_pixels(tmp_path: Path) -> None:
    # Oracle: paint the VOC-inclusive pixel range, the converted box must be its pixel extent.
    xmin, ymin, xmax, ymax = 3, 5, 17, 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = VocDataset(root=_make_voc(tmp_path, {"x": ((20, 12), [("a", (xmin, ymin, xmax, ymax), 0)])}))
    painted = np.zeros((12, 20), dtype=bool)
    painted[ymin - 1 : ymax, xmin - 1 : xmax] = True  # 1-based inclusive -> 0-based slices
    ys, xs = np.nonzero(painted)
    expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert ds[0].targets.boxes[0].tolist() == expected


def test_difficult_ignored_when_not_used(tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        ds = VocDataset(root=_tiny(tmp_path), use_difficult=False)
    assert ds[0].targets.iscrowd.tolist() == [False, True]
    gt = ds.coco_gt()
    anns = gt.imgToAnns[1]
    assert [a["iscrowd"] for a in anns] == [0, 1]


def test_coco_gt_matches_targets(tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        ds = VocDataset(root=_tiny(tmp_path), class_names=["dog", "cat", "bird"])
    assert ds.category_ids == [1, 2, 3]
    gt = ds.coco_gt()
    assert sorted(gt.getCatIds()) == [1, 2, 3]
    assert [gt.cats[c]["name"] for c in ds.category_ids] == ["dog", "cat", "bird"]
    for i in range(len(ds)):
        s = ds[i]
        img = gt.imgs[s.image_id]
        assert (img["height"], img["width"]) == (30, 40)
        anns = gt.imgToAnns[s.image_id]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        torch.testing.assert_close(torch.tensor(boxes).reshape(-1, 4), s.targets.boxes)
        assert [ds.category_ids.index(a["category_id"]) for a in anns] == s.targets.labels.tolist()
        assert [a["area"] for a in anns] == pytest.approx([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes])


def test_unknown_class_names_the_xml(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"img_a\.xml.*'cat'"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        VocDataset(root=_tiny(tmp_path), class_names=["dog"])


def test_missing_split_lists_known_splits(tmp_path: Path) -> None:
    _tiny(tmp_path)
    with pytest.raises(DataError, match=r"test\.txt.*splits found: trainval"):
        VocDataset(root=tmp_path, split="test")


def test_malformed_xml_and_missing_coordinates(tmp_path: Path) -> None:
    root = _make_voc(tmp_path, {"x": ((20, 12), [("a", (1, 1, 5, 5), 0)])})
    xml = root / "Annotations" / "x.xml"
    xml.write_text("<annotation><object>")
    with pytest.raises(DataError, match=r"x\.xml.*not valid XML"):
        VocDataset(root=root)
    xml.write_text(_xml("x.jpg", (20, 12), [("a", (1, "one", 5, 5), 0)]))
    with pytest.raises(DataError, match=r"x\.xml.*object #0 \(a\).*ymin"):
        VocDataset(root=root)


def test_missing_image_raises_on_load(tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        ds = VocDataset(root=_tiny(tmp_path))
    (tmp_path / "JPEGImages" / "img_b.jpg").unlink()
    with pytest.raises(DataError, match=r"img_b\.jpg"):
        ds[1]


def test_missing_size_uses_the_image(tmp_path: Path) -> None:
    root = _make_voc(tmp_path, {"x": (None, [("a", (30, 1, 50, 5), 0)])})  # image is 40x30
    with pytest.warns(UserWarning, match=r"clipped 1"):
        ds = VocDataset(root=root)
    assert ds[0].targets.boxes.tolist() == [[29.0, 0.0, 40.0, 5.0]]
    assert ds.coco_gt().imgs[1]["width"] == 40


# --------------------------------------------------------------------------- BCCD


def _reference_voc_boxes(xml: Path) -> list[tuple[str, list[float]]]:
    """Slow reference: every object of an xml, converted by hand, odd boxes left out."""
    root = ET.parse(xml).getroot()
    w, h = int(root.findtext("size/width")), int(root.findtext("size/height"))
    out = []
    for obj in root.iter("object"):
        v = [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        if v[2] <= v[0] or v[3] <= v[1]:
            continue
        box = [max(v[0] - 1, 0), max(v[1] - 1, 0), min(v[2], w), min(v[3], h)]
        out.append((obj.findtext("name").strip(), box))
    return out


def test_bccd(shared_data: Any) -> None:
    root = shared_data("BCCD")
    with pytest.warns(UserWarning, match=r"dropped 2 box.*BloodImage_00338\.xml"):
        ds = VocDataset(root=root, split="trainval")
    split_ids = (root / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    assert len(ds) == len(split_ids) == 292
    assert ds.class_names == ["Platelets", "RBC", "WBC"]
    gt = ds.coco_gt()
    total = 0
    for i, name in enumerate(split_ids):
        reference = _reference_voc_boxes(root / "Annotations" / f"{name}.xml")
        anns = gt.imgToAnns[ds.image_ids[i]]
        assert [ds.class_names[ds.category_ids.index(a["category_id"])] for a in anns] == [n for n, _ in reference]
        got = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        np.testing.assert_allclose(np.array(got).reshape(-1, 4), np.array([b for _, b in reference]).reshape(-1, 4))
        total += len(anns)
    raw = sum((root / "Annotations" / f"{n}.xml").read_text().count("<object>") for n in split_ids)
    assert total == raw - 2  # every object but the two stray clicks of the warning
    for i in (0, 100, 291):  # a few items load with matching targets
        s = ds[i]
        assert s.image.shape == (3, 480, 640) and s.file_name == f"{split_ids[i]}.jpg"
        anns = gt.imgToAnns[s.image_id]
        assert len(s.targets) == len(anns)
        b = s.targets.boxes
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 640).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 480).all()


def test_difficult_objects_are_ignored_in_evaluation(tmp_path: Path) -> None:
    from detkit.evaluation.coco import CocoEvaluator
    from detkit.structures import Detections

    with pytest.warns(UserWarning):
        ds = VocDataset(root=_tiny(tmp_path), use_difficult=False)
    found_too = CocoEvaluator(ds.coco_gt(), class_names=ds.class_names, category_ids=ds.category_ids)
    missed = CocoEvaluator(ds.coco_gt(), class_names=ds.class_names, category_ids=ds.category_ids)
    for i in range(len(ds)):
        t = ds[i].targets
        # the difficult object gets the top score: were it a false positive, the
        # precision of "cat" would halve
        scores = torch.where(t.iscrowd, 0.95, 0.5)
        found_too.add(ds.image_ids[i], Detections(boxes=t.boxes, scores=scores, labels=t.labels))
        keep = ~t.iscrowd  # were it an ordinary object, missing it would cost recall
        missed.add(ds.image_ids[i], Detections(boxes=t.boxes[keep], scores=scores[keep], labels=t.labels[keep]))
    for evaluator in (found_too, missed):
        m = evaluator.evaluate()["bbox"]
        assert m["AP"] == pytest.approx(1.0, abs=1e-9)
        assert m["per_class"] == pytest.approx({"cat": 1.0, "dog": 1.0}, abs=1e-9)


def test_bccd_perfect_detections_score_one(shared_data: Any) -> None:
    from detkit.evaluation.coco import CocoEvaluator
    from detkit.structures import Detections

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = VocDataset(root=shared_data("BCCD"), split="val")
    evaluator = CocoEvaluator(ds.coco_gt(), class_names=ds.class_names, category_ids=ds.category_ids)
    for i in range(0, len(ds), 10):  # a partial evaluation: only these images count
        t = ds[i].targets
        evaluator.add(ds.image_ids[i], Detections(boxes=t.boxes, scores=torch.ones(len(t)), labels=t.labels))
    m = evaluator.evaluate()["bbox"]
    assert m["AP"] == pytest.approx(1.0, abs=1e-9) and m["AP75"] == pytest.approx(1.0, abs=1e-9)
    assert m["AR100"] == pytest.approx(1.0, abs=1e-9)
