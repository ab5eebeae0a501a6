"""ViaDataset on a hand-written VIA folder and on the real balloon data."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from detkit.data import ViaDataset, register_datasets
from detkit.errors import DataError


def _poly(xs: list[float], ys: list[float], **attrs: Any) -> dict[str, Any]:
    return {
        "shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
        "region_attributes": attrs,
    }


def _rect(x: float, y: float, w: float, h: float, **attrs: Any) -> dict[str, Any]:
    return {
        "shape_attributes": {"name": "rect", "x": x, "y": y, "width": w, "height": h},
        "region_attributes": attrs,
    }


def _make_via(
    root: Path,
    images: dict[str, tuple[tuple[int, int], list[dict[str, Any]]]],
    *,
    as_list: bool = False,
    write_images: bool = True,
) -> Path:
    """A VIA folder: ``images`` maps file name -> ((width, height), regions)."""
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for name, ((w, h), regions) in images.items():
        if write_images:
            cv2.imwrite(str(root / name), np.full((h, w, 3), 128, dtype=np.uint8))
        size = (root / name).stat().st_size if write_images else 0
        data[f"{name}{size}"] = {
            "fileref": "",
            "size": size,
            "filename": name,
            "base64_img_data": "",
            "file_attributes": {},
            "regions": list(regions) if as_list else {str(i): r for i, r in enumerate(regions)},
        }
    (root / "via_region_data.json").write_text(json.dumps(data))
    return root


TRIANGLE = _poly([2, 18, 2], [2, 2, 18], kind="balloon")  # right triangle, legs of 16 px
SQUARE = _poly([4, 12, 12, 4], [5, 5, 13, 13], kind="kite")  # 8x8 square as a polygon
RECT = _rect(20.0, 3.0, 10.0, 6.0, kind="kite")  # a rect-shape region


def _tiny(root: Path, *, as_list: bool = False) -> Path:
    # listed b before a: image ids follow the sorted file names
    return _make_via(
        root,
        {"b.png": ((32, 24), [SQUARE, RECT]), "a.png": ((40, 30), [TRIANGLE])},
        as_list=as_list,
    )


def test_boxes_labels_and_ids(tmp_path: Path) -> None:
    ds = ViaDataset(root=str(_tiny(tmp_path)))
    assert len(ds) == 2 and ds.class_names == ["object"] and ds.category_ids == [1]
    assert ds.image_ids == [1, 2]
    assert [ds.image_path(i).name for i in range(2)] == ["a.png", "b.png"]
    a, b = ds[0], ds[1]
    assert a.file_name == "a.png" and a.image_id == 1 and a.image_size == (30, 40)
    assert torch.equal(a.targets.boxes, torch.tensor([[2.0, 2.0, 18.0, 18.0]]))
    assert torch.equal(b.targets.boxes, torch.tensor([[4.0, 5.0, 12.0, 13.0], [20.0, 3.0, 30.0, 9.0]]))
    assert b.targets.labels.tolist() == [0, 0]
    assert b.targets.iscrowd is not None and not b.targets.iscrowd.any()
    assert b.targets.masks is None and b.targets.boxes.dtype == torch.float32


def test_masks_match_hand_computation_and_coco_gt(tmp_path: Path) -> None:
    ds = ViaDataset(root=_tiny(tmp_path), masks=True)
    a, b = ds[0], ds[1]
    assert b.targets.masks is not None and b.targets.masks.shape == (2, 24, 32)
    expected = np.zeros((2, 24, 32), dtype=np.uint8)
    expected[0, 5:13, 4:12] = 1  # pixels with x in [4, 12), y in [5, 13)
    expected[1, 3:9, 20:30] = 1
    assert np.array_equal(b.targets.masks.numpy(), expected)

    assert a.targets.masks is not None
    tri = a.targets.masks[0].numpy()
    yy, xx = np.mgrid[0:30, 0:40] + 0.5  # pixel centres
    inside = (xx > 2.5) & (yy > 2.5) & (xx + yy < 19.5)
    outside = (xx < 1.5) | (yy < 1.5) | (xx + yy > 20.5)
    assert tri[inside].all() and not tri[outside].any()
    assert abs(int(tri.sum()) - 128) <= 16  # area 16 * 16 / 2 up to the edge pixels

    coco = ds.coco_gt()
    assert sorted(coco.getImgIds()) == [1, 2]
    assert coco.imgs[1] == {"id": 1, "file_name": "a.png", "width": 40, "height": 30}
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[2]))
    assert [ann["bbox"] for ann in anns] == [[4.0, 5.0, 8.0, 8.0], [20.0, 3.0, 10.0, 6.0]]
    for ann, mask in zip(anns, b.targets.masks.numpy()):
        assert ann["iscrowd"] == 0 and ann["category_id"] == 1
        assert np.array_equal(coco.annToMask(ann), mask)
        assert ann["area"] == mask.sum()
    (tri_ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert tri_ann["segmentation"] == [[2, 2, 18, 2, 2, 18]]
    assert np.array_equal(coco.annToMask(tri_ann), tri) and tri_ann["area"] == tri.sum()


def test_list_and_dict_regions_agree(tmp_path: Path) -> None:
    as_dict = ViaDataset(root=_tiny(tmp_path / "d"), masks=True)
    as_list = ViaDataset(root=_tiny(tmp_path / "l", as_list=True), masks=True)
    for i in range(2):
        x, y = as_dict[i].targets, as_list[i].targets
        assert torch.equal(x.boxes, y.boxes) and torch.equal(x.labels, y.labels)
        assert x.masks is not None and y.masks is not None and torch.equal(x.masks, y.masks)


def test_class_attribute_and_names(tmp_path: Path) -> None:
    root = _tiny(tmp_path)
    ds = ViaDataset(root=root, class_attribute="kind")
    assert ds.class_names == ["balloon", "kite"] and ds.category_ids == [1, 2]
    assert ds[0].targets.labels.tolist() == [0] and ds[1].targets.labels.tolist() == [1, 1]
    ds = ViaDataset(root=root, class_attribute="kind", class_names=["kite", "balloon", "bird"])
    assert ds[1].targets.labels.tolist() == [0, 0]
    assert {c["name"]: c["id"] for c in ds.coco_gt().dataset["categories"]} == {"kite": 1, "balloon": 2, "bird": 3}
    assert ViaDataset(root=root, class_names=["balloon"]).class_names == ["balloon"]
    with pytest.raises(DataError, match=r"'kite'.*not among class_names"):
        ViaDataset(root=root, class_attribute="kind", class_names=["balloon"])
    with pytest.raises(DataError, match="class_attribute"):
        ViaDataset(root=root, class_names=["a", "b"])
    with pytest.raises(DataError, match=r"image 'b\.png' region #0 has no region attribute 'colour'"):
        ViaDataset(root=root, class_attribute="colour")


def test_other_shapes_are_skipped_with_a_warning(tmp_path: Path) -> None:
    circle = {"shape_attributes": {"name": "circle", "cx": 5, "cy": 5, "r": 3}, "region_attributes": {}}
    line = _poly([1, 5], [1, 5])
    root = _make_via(tmp_path, {"a.png": ((20, 20), [circle, TRIANGLE, line])})
    with pytest.warns(UserWarning, match=r"skipped 2 region\(s\).*region #0 \('circle' shape\)"):
        ds = ViaDataset(root=root)
    assert ds[0].targets.boxes.tolist() == [[2.0, 2.0, 18.0, 18.0]]


def test_clipping_and_coordinates_of_another_size(tmp_path: Path) -> None:
    root = _make_via(tmp_path / "ok", {"a.png": ((20, 20), [_poly([-1, 21, 10], [5, 5, 15])])})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no clipping warning: a small overshoot is fine
        ds = ViaDataset(root=root, masks=True)
        assert ds[0].targets.boxes.tolist() == [[0.0, 5.0, 20.0, 15.0]]
        assert ds.coco_gt().loadAnns(1)[0]["bbox"] == [0.0, 5.0, 20.0, 10.0]
    # coordinates for a twice larger image: an error naming the region and image
    root = _make_via(tmp_path / "big", {"a.png": ((20, 20), [_poly([10, 38, 10], [10, 10, 38])])})
    ds = ViaDataset(root=root)
    with pytest.raises(DataError, match=r"region #0 spans x 10\.\.38.*another image size"):
        ds[0]
    with pytest.raises(DataError, match="another image size"):
        ds.coco_gt()


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ViaDataset(root=tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "via_region_data.json").write_text("{not json")
    with pytest.raises(DataError, match=r"'.*bad[/\\]via_region_data\.json' is not valid JSON"):
        ViaDataset(root=bad)
    (bad / "via_region_data.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not VIA region data"):
        ViaDataset(root=bad)
    (bad / "via_region_data.json").write_text(json.dumps({"k": {"regions": {}}}))
    with pytest.raises(DataError, match="record 'k' has no 'filename'"):
        ViaDataset(root=bad)
    broken = _poly([1, 2, 3], [1, 2])
    root = _make_via(tmp_path / "pts", {"a.png": ((20, 20), [broken])})
    with pytest.raises(DataError, match=r"image 'a\.png' region #0: all_points_x / all_points_y"):
        ViaDataset(root=root)

    # a missing image: the dataset builds, loading the item raises
    root = _make_via(tmp_path / "missing", {"gone.png": ((20, 20), [TRIANGLE])}, write_images=False)
    ds = ViaDataset(root=root)
    with pytest.raises(DataError, match=r"gone\.png.*does not exist"):
        ds[0]
    with pytest.warns(UserWarning, match="could not be read"):
        coco = ds.coco_gt()
    assert coco.imgs[1]["width"] == 18 and len(coco.anns) == 1


def test_full_via2_project_file_and_registration(tmp_path: Path) -> None:
    root = _tiny(tmp_path)
    metadata = json.loads((root / "via_region_data.json").read_text())
    (root / "project.json").write_text(json.dumps({"_via_settings": {}, "_via_img_metadata": metadata}))
    ds = ViaDataset(root=root, json_name="project.json")
    assert len(ds) == 2 and ds[1].targets.boxes.shape == (2, 4)

    registered: dict[str, Any] = {}

    class _Reg:
        def register(self, kind: str, name: str, factory: Any) -> None:
            registered[f"{kind}/{name}"] = factory

    register_datasets(_Reg())
    assert registered["dataset/via"] is ViaDataset


@pytest.mark.parametrize("split", ["train", "val"])
def test_real_balloon(shared_data: Callable[[str], Path], split: str) -> None:
    root = shared_data("balloon") / split
    raw = json.loads((root / "via_region_data.json").read_text())
    num_regions = sum(len(r["regions"]) for r in raw.values())
    ds = ViaDataset(root=root, masks=True)
    assert len(ds) == len(raw)
    coco = ds.coco_gt()
    assert len(coco.imgs) == len(raw) and len(coco.anns) == num_regions
    assert all(ann["area"] > 0 for ann in coco.anns.values())
    total = 0
    for i in range(len(ds)):
        sample = ds[i]
        h, w = sample.image_size
        t = sample.targets
        assert coco.imgs[sample.image_id]["width"] == w and coco.imgs[sample.image_id]["height"] == h
        boxes = t.boxes
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert t.masks is not None and t.masks.shape == (len(boxes), h, w)
        assert (t.masks.flatten(1).sum(1) > 0).all()
        total += len(boxes)
    assert total == num_regions
