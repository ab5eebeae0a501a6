"""Held-out splits of one annotated set (``data.val: {name: split, of: train}``): partition, strata, training."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from detkit.cli import main
from detkit.config import load_config
from detkit.data import CocoDataset, SubsetDataset, split_indices
from detkit.engine.build import build_dataset, plugins_for
from detkit.errors import ConfigError, DataError


def _coco(root: Path, *, num_a: int = 10, num_b: int = 5, num_empty: int = 5) -> Path:
    """A COCO set: ``num_a`` images with class a, ``num_b`` with a and b (b is rarer), ``num_empty`` background."""
    root.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    kinds = ["a"] * num_a + ["ab"] * num_b + [""] * num_empty
    for i, kind in enumerate(kinds, start=1):
        name = f"{i:03d}.png"
        cv2.imwrite(str(root / name), np.zeros((8, 8, 3), np.uint8))
        images.append({"id": i, "file_name": name, "width": 8, "height": 8})
        for cat in kind:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1 if cat == "a" else 2,
                         "bbox": [1, 1, 4, 4], "iscrowd": 0})
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (root / "ann.json").write_text(json.dumps(data))
    return root / "ann.json"


def test_split_is_a_deterministic_partition_of_the_right_size(tmp_path: Path) -> None:
    ds = CocoDataset(ann_file=_coco(tmp_path))
    n = len(ds)
    for fraction in (0.05, 0.2, 0.33, 0.5, 0.9):
        for stratify in (True, False):
            held, rest = split_indices(ds, fraction=fraction, seed=1, stratify=stratify)
            assert not set(held) & set(rest) and sorted(held + rest) == list(range(n))  # disjoint, covering
            assert len(held) == round(fraction * n)
            assert (held, rest) == split_indices(ds, fraction=fraction, seed=1, stratify=stratify)  # by seed
    draws = {tuple(split_indices(ds, fraction=0.2, seed=s)[0]) for s in range(6)}
    assert len(draws) > 1  # the seed matters
    # at least one image either side, whatever the fraction
    assert [len(p) for p in split_indices(ds, fraction=0.001)] == [1, n - 1]
    assert [len(p) for p in split_indices(ds, fraction=0.999)] == [n - 1, 1]
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="fraction must be between 0 and 1"):
            split_indices(ds, fraction=bad)


def test_split_is_stratified_by_rarest_class_and_background(tmp_path: Path) -> None:
    ds = CocoDataset(ann_file=_coco(tmp_path))  # items 0-9: a; 10-14: a and b (stratum b); 15-19: background
    for seed in range(5):
        held, _ = split_indices(ds, fraction=0.2, seed=seed)
        strata = [sum(1 for i in held if lo <= i < hi) for lo, hi in ((0, 10), (10, 15), (15, 20))]
        assert strata == [2, 1, 1]  # 4 images: 10, 5 and 5 images in proportion


def _config(tmp_path: Path, val: str) -> dict:
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"data:\n  train: {{name: coco, ann_file: {_coco(tmp_path / 'set')}}}\n  val: {val}\n")
    return load_config(config_file)


def test_build_dataset_holds_out_val_and_trains_on_the_rest(tmp_path: Path) -> None:
    config = _config(tmp_path, "{name: split, of: train, fraction: 0.25, seed: 3}")
    plugins = plugins_for(config)
    val = build_dataset(config, "val", plugins)
    train = build_dataset(config, "train", plugins)
    assert isinstance(val, SubsetDataset) and isinstance(train, SubsetDataset)
    assert len(val) == 5 and len(train) == 15
    assert not set(val.image_ids) & set(train.image_ids) and sorted(val.image_ids + train.image_ids) == list(
        range(1, 21)
    )
    assert val.class_names == train.class_names == ["a", "b"] and val.category_ids == [1, 2]
    # items are the source's: same sample, same file, and the ground truth covers the subset only
    source = CocoDataset(ann_file=tmp_path / "set" / "ann.json")
    i = val.indices[0]
    assert val.image_path(0) == source.image_path(i) and val[0].image_id == source[i].image_id
    assert sorted(val.coco_gt().getImgIds()) == sorted(val.image_ids)
    assert {a["image_id"] for a in val.coco_gt().dataset["annotations"]} <= set(val.image_ids)
    # the config names every setting of the split, so the run's config.yaml reproduces it
    assert config["data"]["val"] == {"name": "split", "of": "train", "fraction": 0.25, "seed": 3, "stratify": True}
    overrides = ["data.train.name=coco", f"data.train.ann_file={tmp_path / 'set' / 'ann.json'}"]
    overrides += [f"data.val.{k}={v}" for k, v in config["data"]["val"].items()]
    again = build_dataset(load_config(None, overrides), "val", plugins)
    assert again.image_ids == val.image_ids


@pytest.mark.parametrize(
    ("val", "message"),
    [
        ("{name: split, of: val}", r"'data\.val\.of' is 'val'"),
        ("{name: split, of: test}", r"'data\.val\.of' is 'test'"),
        ("{name: split, fraction: 1.5}", r"config key 'data\.val': cannot build dataset 'split': fraction must be"),
        ("{name: split, fracton: 0.2}", r"unknown key 'fracton' for dataset 'split' \(did you mean 'fraction'\?\)"),
        ("{name: split, source: x}", r"'source' is set by detkit"),
    ],
)
def test_split_config_errors(tmp_path: Path, val: str, message: str) -> None:
    config = _config(tmp_path, val)
    with pytest.raises(ConfigError, match=message):
        build_dataset(config, "val", plugins_for(config))


def test_split_of_a_single_image_is_an_error(tmp_path: Path) -> None:
    ds = CocoDataset(ann_file=_coco(tmp_path, num_a=1, num_b=0, num_empty=0))
    with pytest.raises(DataError, match=r"has 1 image\(s\); a split needs at least 2"):
        split_indices(ds, fraction=0.5)


def test_training_with_a_held_out_split_and_eval_reproducing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from detkit.engine.run import run_training

    monkeypatch.chdir(tmp_path)
    config = load_config("detkit:shapes_faster_rcnn.yaml", [
        f"data.train.root={tmp_path / 'shapes'}", "data.train.num_train=10", "data.train.num_val=0",
        "data.train.image_size=64", "data.val={name: split, of: train, fraction: 0.3, seed: 1}",
        "train.max_iters=2", "train.batch_size=2", "train.max_minutes=null", f"output.dir={tmp_path / 'run'}",
    ])
    metrics = run_training(config, progress=False)
    assert metrics["images"]["total"] == 3  # evaluated on the 3 held-out images
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["data"]["val"] == {"name": "split", "of": "train", "fraction": 0.3, "seed": 1, "stratify": True}
    # detkit eval without --data: the checkpoint's data.val, the same 3 images
    assert main(["-q", "eval", "--weights", str(tmp_path / "run" / "best.pt"), "--out", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["images"]["total"] == 3
    held = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {r["image_id"] for r in held} <= set(build_dataset(written, "val", plugins_for(written)).image_ids)
    capsys.readouterr()
