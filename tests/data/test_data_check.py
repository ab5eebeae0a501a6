"""detkit.data.check: every planted problem is found and located; clean data has none.

The oracles are hand-made files whose problems are known record by record (each
planted problem is expected with its file, image id and annotation id, and nothing
else is), pycocotools' own index of a clean generated dataset (class counts), and
the loaders themselves (what they drop or clip is what the check reports).
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from detkit.config import load_config
from detkit.data.base import DetectionDataset, Sample
from detkit.data.check import (
    KINDS,
    OUTSIDE_TOLERANCE,
    DataReport,
    check_before_training,
    check_coco,
    check_config,
    check_dataset,
    check_mode,
    check_source,
    check_via,
    check_voc,
    format_report,
    probe_image,
    write_report,
)
from detkit.data.coco import CocoDataset
from detkit.data.shapes import generate_shapes
from detkit.data.voc import VocDataset
from detkit.errors import ConfigError, DataError
from detkit.plugins import load_plugins


def _image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def _located(report: DataReport) -> set[tuple[str, Any, Any]]:
    """``(kind, image_id, ann_id)`` of every problem found."""
    return {(p.kind, p.image_id, p.ann_id) for kind in KINDS for p in report.problems(kind)}


# --------------------------------------------------------------------------- COCO, every problem planted

#: (kind, image id, annotation id) of every problem planted in :func:`planted_coco`.
PLANTED = {
    ("missing_image", 2, None),  # missing.png is not on disk
    ("missing_image", 3, None),  # corrupt.png is text
    ("size_mismatch", 4, None),  # the record says 50x30, the file is 40x30
    ("duplicate_id", 5, None),  # image id 5 twice
    ("empty_image", 6, None),  # no annotations
    ("empty_image", 4, None),  # only a crowd region
    ("degenerate_box", 1, 2),
    ("box_partly_outside", 1, 3),
    ("box_outside", 1, 4),
    ("unknown_category", 1, 5),
    ("orphan_annotation", 77, 6),
    ("duplicate_id", 1, 1),  # annotation id 1 twice
    ("bad_polygon", 1, 7),  # two points
    ("crowd", 4, 8),
    ("bad_record", 1, 9),  # bbox is not numbers
}
NUM_ERRORS = sum(1 for kind, _, _ in PLANTED if KINDS[kind].severity == "error")


@pytest.fixture
def planted_coco(tmp_path: Path) -> Path:
    """A COCO json over a few generated images with each kind of COCO problem planted once (see PLANTED)."""
    images = tmp_path / "images"
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png"):
        _image(images / name, 40, 30)
    (images / "corrupt.png").write_text("not an image")
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "missing.png", "width": 40, "height": 30},
            {"id": 3, "file_name": "corrupt.png", "width": 40, "height": 30},
            {"id": 4, "file_name": "b.png", "width": 50, "height": 30},
            {"id": 5, "file_name": "c.png", "width": 40, "height": 30},
            {"id": 5, "file_name": "d.png", "width": 40, "height": 30},
            {"id": 6, "file_name": "e.png", "width": 40, "height": 30},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 4], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [30, 20, 15, 5], "iscrowd": 0},
            {"id": 4, "image_id": 1, "category_id": 2, "bbox": [45, 0, 5, 5], "iscrowd": 0},
            {"id": 5, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 6, "image_id": 77, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [20, 3, 8, 16], "iscrowd": 0},
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [3, 3, 4, 4], "iscrowd": 0,
             "segmentation": [[3, 3, 7, 7]]},
            {"id": 8, "image_id": 4, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 1,
             "segmentation": {"size": [30, 40], "counts": [0, 300, 900]}},
            {"id": 9, "image_id": 1, "category_id": 1, "bbox": "oops", "iscrowd": 0},
        ] + [
            {"id": 10 + k, "image_id": image_id, "category_id": 2, "bbox": [1, 1, 4, 4], "iscrowd": 0}
            for k, image_id in enumerate((2, 3, 5))  # good annotations, so these images are not empty
        ],
    }  # fmt: skip
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(data))
    return ann


def test_every_planted_coco_problem_is_found_and_located(planted_coco: Path) -> None:
    report = check_coco(planted_coco, planted_coco.parent / "images", progress=False)
    assert _located(report) == PLANTED
    assert report.num_images == 6 and report.num_objects == 13
    for kind in KINDS:
        problems = report.problems(kind)
        assert report.counts[kind] == len(problems)
        assert all(p.file == str(planted_coco) for p in problems)
    assert (report.num_errors, report.num_warnings) == (NUM_ERRORS, 1) == (11, 1)
    # objects counted: annotations 1 (cat, 10x10), 3 (dog, partly outside but usable), 1-again (dog), 7 (cat),
    # 10-12 (dogs)
    assert report.class_counts == {"cat": 2, "dog": 5}
    assert sorted(report.box_sides) == pytest.approx(sorted([10.0, np.sqrt(75), np.sqrt(128), 4.0, 4.0, 4.0, 4.0]))


def _printed_sections(text: str) -> dict[str, list[str]]:
    """The printed report's example lines under each problem heading (``  error: LABEL: N``), by label."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        heading = re.match(r"^  (error|warning|info): (.*): \d+$", line)
        if heading:
            current = sections.setdefault(heading.group(2), [])
        elif line.startswith("      "):
            current.append(line)
        else:
            current = []
    return sections


def test_the_printed_report_names_file_image_and_annotation(planted_coco: Path) -> None:
    report = check_coco(planted_coco, planted_coco.parent / "images", progress=False)
    text = format_report(report, max_examples=10)
    assert str(planted_coco) in text.splitlines()[0]  # the file, once, in the heading
    sections = _printed_sections(text)
    for kind, image_id, ann_id in PLANTED:
        pattern = rf"image id {image_id}\b" + (rf".*annotation id {ann_id}\b" if ann_id is not None else "")
        assert any(re.search(pattern, line) for line in sections[KINDS[kind].label]), (kind, image_id, ann_id)
    assert "'missing.png'" in text and str(planted_coco.parent / "images" / "corrupt.png") in text
    assert "error: missing or unreadable images: 2" in text
    assert "warning: boxes partly outside the image: 1" in text
    assert "info: crowd regions: 1" in text


def test_what_the_coco_loader_drops_is_what_the_check_calls_unusable(planted_coco: Path) -> None:
    """Oracle: CocoDataset refuses the file at the first problem the check lists as an error."""
    with pytest.raises(DataError):
        CocoDataset(ann_file=planted_coco, images=planted_coco.parent / "images")


def test_outside_tolerance_is_sub_pixel_rounding(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", 40, 30)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40 + OUTSIDE_TOLERANCE, 30], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [-1.5, 0, 10, 10], "iscrowd": 0},
    ]
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
                               "categories": [{"id": 1, "name": "x"}], "annotations": anns}))
    report = check_coco(ann, tmp_path, progress=False)
    assert _located(report) == {("box_partly_outside", 1, 2)}


# --------------------------------------------------------------------------- clean data


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_train=12, num_val=4, image_size=64, seed=3)
    return root


def test_generated_shapes_have_no_problems(shapes_root: Path) -> None:
    ann = shapes_root / "annotations" / "instances_train.json"
    (report,) = check_source(ann, images=shapes_root / "train", progress=False)
    assert report.num_errors == 0 and report.num_warnings == 0
    assert report.summary() == "no problems"
    coco = COCO(str(ann))  # the oracle: pycocotools' index of the same file
    expected = {c["name"]: len(coco.getAnnIds(catIds=[c["id"]])) for c in coco.loadCats(coco.getCatIds())}
    assert report.class_counts == expected
    assert len(report.box_sides) == len(coco.getAnnIds())
    sizes = report.size_counts()
    areas = np.array([a["bbox"][2] * a["bbox"][3] for a in coco.loadAnns(coco.getAnnIds())])
    assert sizes == {"small": int((areas < 32**2).sum()), "medium": int(((areas >= 32**2) & (areas < 96**2)).sum()),
                     "large": int((areas >= 96**2).sum())}
    edges, counts = report.side_histogram()
    assert sum(counts) == len(areas) and edges[0] <= np.sqrt(areas).min() and edges[-1] > np.sqrt(areas).max()


def test_config_check_covers_train_and_val_and_names_them(shapes_root: Path, tmp_path: Path) -> None:
    config = load_config("detkit:shapes_faster_rcnn.yaml", [
        f"data.train.root={shapes_root}", f"data.val.root={shapes_root}", "data.train.num_train=12",
        "data.train.num_val=4", "data.val.num_train=12", "data.val.num_val=4", "data.train.image_size=64",
        "data.val.image_size=64", "data.train.seed=3", "data.val.seed=3",
    ])
    reports = check_config(config, load_plugins().registry, progress=False)
    assert [r.name for r in reports] == ["data.train", "data.val"]
    assert [r.num_images for r in reports] == [12, 4]
    assert all(r.num_errors == r.num_warnings == 0 for r in reports)
    written = write_report(reports, tmp_path / "out")
    assert [p.name for p in written] == ["report.json", "classes.png", "box_sizes.png"]
    for png in written[1:]:
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 100
    saved = json.loads(written[0].read_text())
    assert saved["num_errors"] == 0 and [d["name"] for d in saved["datasets"]] == ["data.train", "data.val"]
    assert not list((tmp_path / "out").glob(".*"))  # atomic writes leave no temporary file


def test_a_coco_spec_is_checked_from_its_file_without_building(planted_coco: Path) -> None:
    config = load_config("detkit:shapes_faster_rcnn.yaml", [
        "data.train.name=coco", f"data.train.ann_file={planted_coco}",
        f"data.train.images={planted_coco.parent}/images", "data.val=null",
    ])
    (report,) = check_config(config, load_plugins().registry, progress=False)
    assert report.name == "data.train" and _located(report) == PLANTED


def test_a_held_out_split_is_checked_with_its_source(planted_coco: Path) -> None:
    spec = {"name": "coco", "ann_file": str(planted_coco), "images": str(planted_coco.parent / "images")}
    config = {"data": {"train": spec, "val": {"name": "split", "of": "train", "fraction": 0.2}}}
    (report,) = check_config(config, load_plugins().registry, progress=False)
    assert report.name == "data.train (and data.val, a held-out part of it)"


# --------------------------------------------------------------------------- VOC and VIA


def _voc_xml(path: Path, filename: str, size: tuple[int, int] | None, objects: list[tuple[str, tuple, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b, difficult in objects
    )
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
    path.write_text(f"<annotation><filename>{filename}</filename>{size_xml}{objs}</annotation>")


def test_voc_problems_are_found_and_match_what_the_loader_repairs(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    for name in ("a", "b", "d"):
        _image(root / "JPEGImages" / f"{name}.jpg", 40, 30)
    _voc_xml(root / "Annotations" / "a.xml", "a.jpg", (40, 30), [
        ("cell", (1, 1, 10, 10), 0),
        ("cell", (5, 5, 5, 9), 0),  # degenerate
        ("cell", (30, 20, 45, 30), 0),  # partly outside (5 px)
        ("cell", (50, 1, 60, 10), 0),  # wholly outside
        ("cell", (2, 2, 8, 8), 1),  # difficult
    ])
    _voc_xml(root / "Annotations" / "b.xml", "b.jpg", (50, 30), [("cell", (1, 1, 10, 10), 0)])  # size mismatch
    _voc_xml(root / "Annotations" / "c.xml", "c.jpg", (40, 30), [("cell", (1, 1, 10, 10), 0)])  # missing image
    _voc_xml(root / "Annotations" / "d.xml", "d.jpg", (40, 30), [])  # no objects
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\nc\nd\na\ne\n")  # 'a' twice, no e.xml
    report = check_voc(root, split="train", progress=False)
    assert _located(report) == {
        ("degenerate_box", 1, "object #1"), ("box_partly_outside", 1, "object #2"), ("box_outside", 1, "object #3"),
        ("difficult", 1, "object #4"), ("size_mismatch", 2, None), ("missing_image", 3, None),
        ("empty_image", 4, None), ("duplicate_id", 5, None), ("degenerate_box", 5, "object #1"),
        ("box_partly_outside", 5, "object #2"), ("box_outside", 5, "object #3"), ("difficult", 5, "object #4"),
        ("bad_record", 6, None),
    }
    assert report.problems("box_outside")[0].file == str(root / "Annotations" / "a.xml")
    assert report.problems("bad_record")[0].detail.endswith("e.xml' does not exist")
    # the oracle: the loader drops and clips the same boxes (without the missing e.xml it can be built)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        VocDataset(root=root, split="train")
    message = str(caught[0].message)
    assert "clipped 1 box(es)" in message and "dropped 2 box(es)" in message


def test_voc_unknown_class_and_every_split(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    _image(root / "JPEGImages" / "a.jpg", 40, 30)
    _voc_xml(root / "Annotations" / "a.xml", "a.jpg", (40, 30), [("cell", (1, 1, 10, 10), 0), ("dog", (1, 1, 9, 9), 0)])
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for split in ("train", "test", "cell_train"):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("a\n")
    report = check_voc(root, split="train", class_names=["cell"], progress=False)
    assert _located(report) == {("unknown_category", 1, "object #1")}
    assert report.class_counts == {"cell": 1}
    assert [r.name for r in check_source(root, progress=False)] == [f"{root} (test)", f"{root} (train)"]


def test_via_problems_are_found(tmp_path: Path) -> None:
    root = tmp_path / "via"
    _image(root / "a.jpg", 40, 30)
    _image(root / "b.jpg", 40, 30)

    def polygon(xs: list[float], ys: list[float]) -> dict[str, Any]:
        return {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
                "region_attributes": {}}

    size_a = (root / "a.jpg").stat().st_size
    data = {
        "a": {"filename": "a.jpg", "size": size_a, "regions": [
            polygon([1, 10, 10], [1, 1, 10]),
            polygon([1, 10], [1, 10]),  # two points
            {"shape_attributes": {"name": "circle", "cx": 5, "cy": 5, "r": 2}},
            polygon([30, 41.5, 41.5], [1, 1, 10]),  # 1.5 px outside: clipped
            polygon([100, 200, 200], [100, 100, 200]),  # far beyond a 40x30 image
            polygon([5, 5, 5], [1, 5, 9]),  # no width
        ]},
        "b": {"filename": "b.jpg", "size": 12, "regions": []},  # not the annotated file, no regions
        "c": {"filename": "c.jpg", "size": 5, "regions": [polygon([1, 5, 5], [1, 1, 5])]},  # missing
    }  # fmt: skip
    (root / "via_region_data.json").write_text(json.dumps(data))
    (report,) = check_source(root, progress=False)
    assert _located(report) == {
        ("bad_polygon", 1, "region #1"), ("unsupported_shape", 1, "region #2"), ("box_partly_outside", 1, "region #3"),
        ("size_mismatch", 1, "region #4"), ("degenerate_box", 1, "region #5"),
        ("file_changed", 2, None), ("empty_image", 2, None), ("missing_image", 3, None),
    }
    assert report.class_counts == {"object": 3}
    assert check_via(root, progress=False).counts == report.counts
    assert check_source(root / "via_region_data.json", progress=False)[0].counts == report.counts


# --------------------------------------------------------------------------- any dataset


class _ListDataset(DetectionDataset):
    """A dataset known only through the protocol: in-memory COCO records and image paths."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.class_names, self.category_ids, self.image_ids = ["thing"], [1], [10, 20]
        self.data = {
            "images": [{"id": 10, "file_name": "a.png", "width": 40, "height": 30},
                       {"id": 20, "file_name": "gone.png", "width": 40, "height": 30}],
            "annotations": [{"id": 1, "image_id": 10, "category_id": 1, "bbox": [35, 25, 10, 10], "iscrowd": 0}],
            "categories": [{"id": 1, "name": "thing"}],
        }  # fmt: skip

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError

    def image_path(self, index: int) -> Path:
        return self.root / ["a.png", "gone.png"][index]

    def coco_gt(self) -> COCO:
        from detkit.data.base import coco_from_dict

        return coco_from_dict(self.data)


def test_any_dataset_is_checked_through_the_protocol(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", 40, 30)
    report = check_dataset(_ListDataset(tmp_path), name="mine", progress=False)
    assert report.format == "dataset" and report.name == "mine"
    assert _located(report) == {("box_partly_outside", 10, 1), ("missing_image", 20, None), ("empty_image", 20, None)}
    assert str(tmp_path / "gone.png") in report.problems("missing_image")[0].detail


# --------------------------------------------------------------------------- sources, modes, training


def test_unusable_sources_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "folder").mkdir()
    for source in (tmp_path / "bad.json", tmp_path / "folder", tmp_path / "nothing.json", tmp_path / "x.txt"):
        with pytest.raises(DataError) as info:
            check_source(source, progress=False)
        assert "\n" not in str(info.value)


def test_probe_image_reads_headers_and_names_bad_files(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", 41, 17)
    assert probe_image(tmp_path / "a.png") == probe_image(tmp_path / "a.png", decode=True) == (41, 17)
    (tmp_path / "b.png").write_bytes(b"")
    for name in ("b.png", "nothing.png"):
        with pytest.raises(DataError, match=name):
            probe_image(tmp_path / name)


def test_check_mode_values() -> None:
    assert [check_mode(v) for v in ("strict", "warn", "off", False, None, "WARN")] == [
        "strict", "warn", "off", "off", "warn", "warn"
    ]
    with pytest.raises(ConfigError, match=r"data\.check"):
        check_mode("sometimes")


def _training_config(ann: Path, mode: str) -> dict[str, Any]:
    return load_config("detkit:shapes_faster_rcnn.yaml", [
        "data.train.name=coco", f"data.train.ann_file={ann}", f"data.train.images={ann.parent}/images",
        "data.val=null", f"data.check={mode}",
    ])


def test_strict_stops_with_one_line_counting_the_errors(planted_coco: Path, tmp_path: Path) -> None:
    registry = load_plugins().registry
    with pytest.raises(DataError) as info:
        check_before_training(_training_config(planted_coco, "strict"), registry, out_dir=tmp_path, progress=False)
    message = str(info.value)
    assert "\n" not in message and "data.check=strict" in message
    assert "missing or unreadable images: 2" in message and "orphan annotations (image id not in images): 1" in message
    assert json.loads((tmp_path / "data_check.json").read_text())["num_errors"] == NUM_ERRORS


def test_warn_logs_the_summary_and_goes_on(planted_coco: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = load_plugins().registry
    with caplog.at_level(logging.WARNING, logger="detkit.data.check"):
        reports = check_before_training(_training_config(planted_coco, "warn"), registry, progress=False)
    assert reports[0].num_errors == NUM_ERRORS
    assert f"data.train: {NUM_ERRORS} errors" in caplog.text and "1 warning" in caplog.text


def test_off_reads_nothing(tmp_path: Path) -> None:
    config = _training_config(tmp_path / "missing.json", "off")
    assert check_before_training(config, load_plugins().registry, progress=False) == []


def test_training_stops_on_errors_before_building_anything(planted_coco: Path, tmp_path: Path) -> None:
    from detkit.engine.run import run_training

    config = _training_config(planted_coco, "strict")
    config["output"]["dir"] = str(tmp_path / "run")
    with pytest.raises(DataError, match=f"data check found {NUM_ERRORS} errors"):
        run_training(config, progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["data_check.json"]


# --------------------------------------------------------------------------- the command


def test_cli_exits_1_on_errors_names_them_and_writes_report_and_pngs(planted_coco: Path, tmp_path: Path, capsys):
    from detkit.cli import main

    out = tmp_path / "check"
    code = main(["data", "check", str(planted_coco), "--images", str(planted_coco.parent / "images"),
                 "--out", str(out), "-q", "--examples", "10"])
    printed = capsys.readouterr().out
    assert code == 1
    sections = _printed_sections(printed)
    for kind, image_id, ann_id in PLANTED:
        pattern = rf"image id {image_id}\b" + (rf".*annotation id {ann_id}\b" if ann_id is not None else "")
        assert any(re.search(pattern, line) for line in sections[KINDS[kind].label]), (kind, image_id, ann_id)
    assert f"{NUM_ERRORS} errors" in printed and "report.json" in printed
    saved = json.loads((out / "report.json").read_text())
    assert saved["num_errors"] == NUM_ERRORS and saved["num_warnings"] == 1
    problems = saved["datasets"][0]["problems"]
    assert {(e["image_id"], e["ann_id"]) for e in problems["degenerate_box"]["examples"]} == {(1, 2)}
    for name in ("classes.png", "box_sizes.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG"


def test_cli_exits_0_on_clean_data_and_on_warnings(shapes_root: Path, tmp_path: Path, capsys):
    from detkit.cli import main

    ann = shapes_root / "annotations" / "instances_val.json"
    assert main(["data", "check", str(ann), "--out", str(tmp_path / "a"), "-q"]) == 0
    assert "no problems" in capsys.readouterr().out
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"][0] = -5.0  # partly outside: a warning only
    warned = tmp_path / "warned.json"
    warned.write_text(json.dumps(data))
    assert main(["data", "check", str(warned), "--images", str(shapes_root / "val"), "--out", str(tmp_path / "b"),
                 "-q"]) == 0
    assert "1 warning" in capsys.readouterr().out


def test_cli_checks_a_config_with_overrides(shapes_root: Path, tmp_path: Path, capsys):
    from detkit.cli import main

    config = tmp_path / "mine.yaml"
    config.write_text(
        "base: detkit:shapes_faster_rcnn.yaml\n"
        f"data: {{train: {{root: {shapes_root}, num_train: 12, num_val: 4, image_size: 64, seed: 3}},"
        f" val: {{root: {shapes_root}, num_train: 12, num_val: 4, image_size: 64, seed: 3}}}}\n"
    )
    assert main(["data", "check", str(config), "data.val=null", "--out", str(tmp_path / "c"), "-q"]) == 0
    saved = json.loads((tmp_path / "c" / "report.json").read_text())
    assert [(d["name"], d["num_images"]) for d in saved["datasets"]] == [("data.train", 12)]


def test_cli_unreadable_source_exits_2_with_one_line(tmp_path: Path, capsys):
    from detkit.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["data", "check", str(bad), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.json" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()


def test_a_yolo_data_yaml_is_checked_split_by_split(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        for name in names:
            _image(root / "images" / split / f"{name}.png", 40, 30)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{name}.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (root / "labels" / "train" / "b.txt").write_text("")  # background image
    (root / "images" / "val" / "c.png").write_text("not an image")
    (root / "data.yaml").write_text("names: [thing]\ntrain: images/train\nval: images/val\n")
    train, val = check_source(root / "data.yaml", progress=False)
    assert train.name.endswith("(train)") and val.name.endswith("(val)")
    assert _located(train) == {("empty_image", 2, None)} and train.class_counts == {"thing": 1}
    assert ("missing_image", 1, None) in _located(val)
    assert train.box_sides == pytest.approx([np.sqrt(10 * 15)])
    assert [r.name for r in check_source(root, split="val", progress=False)] == [val.name]
