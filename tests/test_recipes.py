"""Shipped recipes (flat, packaged, ``detkit:NAME.yaml``) and where config paths resolve."""

from __future__ import annotations

import os
from pathlib import Path
from textwrap import dedent

import pytest
import torch
import yaml

from detkit.classify.train import SCHEMA as CLASSIFY
from detkit.config import (
    DEFAULTS,
    RECIPES_DIR,
    Schema,
    list_recipes,
    load_config,
    read_config_file,
    recipe_path,
    save_config,
)
from detkit.errors import ConfigError
from detkit.importers import CONFIG_DIR, fasterrcnn_resnet50_fpn

RECIPES = list_recipes()
CHECKOUT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text), encoding="utf-8")
    return path


def schema_of(name: str) -> Schema | None:
    return CLASSIFY if name.startswith("classify_") else None


def load(path: str | Path, overrides: list[str] | None = None, *, schema: Schema | None = None) -> dict:
    return load_config(path, overrides or [], schema=schema) if schema else load_config(path, overrides or [])


# ----------------------------------------------------------------------------- the shipped recipes


def test_recipes_are_package_data_and_the_checkout_links_them() -> None:
    assert Path(__import__("detkit").__file__).resolve().parent / "configs" == RECIPES_DIR
    assert CONFIG_DIR == RECIPES_DIR
    assert len(RECIPES) >= 20 and "shapes_faster_rcnn.yaml" in RECIPES
    if CHECKOUT_CONFIGS.exists():  # a checkout: configs/ is the same folder
        assert CHECKOUT_CONFIGS.resolve() == RECIPES_DIR
        assert sorted(p.name for p in CHECKOUT_CONFIGS.glob("*.yaml")) == RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_is_flat(name: str) -> None:
    data = yaml.safe_load((RECIPES_DIR / name).read_text(encoding="utf-8"))
    assert "base" not in data, f"{name} has a base: of its own, so it cannot serve as a base"


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_serves_as_a_base_from_another_folder(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    user = write(tmp_path / "project" / "mine.yaml", f"""
        base: detkit:{name}
        train: {{epochs: 1}}
    """)
    schema = schema_of(name)
    expected = load(recipe_path(name), schema=schema)
    expected["train"]["epochs"] = 1
    assert load(user, schema=schema) == expected
    assert load(f"detkit:{name}", schema=schema) == load(RECIPES_DIR / name, schema=schema)


def test_recipe_data_under_the_current_directory_follows_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shipped recipes name their data with ${cwd}: the packaged folder never holds data or runs."""
    monkeypatch.chdir(tmp_path)
    config = load_config("detkit:shapes_faster_rcnn.yaml")
    assert config["data"]["train"]["root"] == str(tmp_path / "runs" / "demo" / "data")
    assert config["output"]["dir"] == "runs/demo"  # outputs stay relative to the current directory
    bccd = load_config("detkit:bccd_faster_rcnn.yaml")
    assert bccd["data"]["val"]["root"] == os.path.normpath(tmp_path / ".." / "shared" / "data" / "BCCD")


def test_a_recipe_path_resolves_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert recipe_path("bccd_faster_rcnn.yaml") == RECIPES_DIR / "bccd_faster_rcnn.yaml"
    assert recipe_path("bccd_faster_rcnn") == RECIPES_DIR / "bccd_faster_rcnn.yaml"
    assert read_config_file("detkit:bccd_faster_rcnn.yaml") == read_config_file(RECIPES_DIR / "bccd_faster_rcnn.yaml")
    assert read_config_file(Path("detkit:bccd_faster_rcnn.yaml"))["model"]["backbone"]["width"] == 32


def test_base_recipe_merges_key_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    user = write(tmp_path / "cfg" / "cells.yaml", """
        base: detkit:bccd_faster_rcnn.yaml
        model:
          backbone: {name: resnet34}           # another name: replaces the section
          proposer: {name: rpn, nms_thresh: 0.6}  # the same name: merges key by key
          roi_head: {batch_size_per_image: 64}  # no name: merges onto the recipe's
        data:
          train: {split: train}
          val: {root: cells}
        train: {lr: 0.01}
    """)
    base = load_config("detkit:bccd_faster_rcnn.yaml")
    config = load_config(user)
    assert config["model"]["backbone"] == {"name": "resnet34"}
    assert config["model"]["proposer"] == {**base["model"]["proposer"], "nms_thresh": 0.6}
    assert config["model"]["roi_head"] == {**base["model"]["roi_head"], "batch_size_per_image": 64}
    assert config["data"]["train"] == {**base["data"]["train"], "split": "train"}
    assert config["data"]["val"] == {**base["data"]["val"], "root": str(tmp_path / "cfg" / "cells")}
    assert config["train"] == {**base["train"], "lr": 0.01}
    assert config["model"]["neck"] == base["model"]["neck"]


def test_a_nameless_section_needs_something_to_merge_onto(tmp_path: Path) -> None:
    user = write(tmp_path / "c.yaml", "base: detkit:shapes_faster_rcnn.yaml\nmodel:\n  mask_head: {conv_channels: 8}\n")
    with pytest.raises(ConfigError, match=r"'model.mask_head' must be a mapping with a 'name' key") as info:
        load_config(user)
    assert str(info.value).startswith(str(user))


def test_unknown_recipe_lists_the_recipes_with_a_suggestion(tmp_path: Path) -> None:
    suggestion = r"no recipe 'bccd_faster_rnn.yaml' \(did you mean 'bccd_faster_rcnn'\?\)"
    with pytest.raises(ConfigError, match=suggestion) as info:
        load_config("detkit:bccd_faster_rnn.yaml")
    assert "shapes_faster_rcnn.yaml" in str(info.value) and "yolo_v1.yaml" in str(info.value)
    user = write(tmp_path / "c.yaml", "base: detkit:shapes_faster.yaml\n")
    with pytest.raises(ConfigError, match=r"base: detkit ships no recipe 'shapes_faster.yaml'") as info:
        load_config(user)
    assert str(info.value).startswith(str(user))
    with pytest.raises(ConfigError, match="no recipe"):
        recipe_path("../configs/rcnn.yaml")  # a name, never a path out of the folder


def test_importer_config_path_takes_a_recipe_name() -> None:
    importer = fasterrcnn_resnet50_fpn()
    state = {"backbone.body.conv1.weight": torch.zeros(1)}
    config, names, converted = importer.convert(state, config_path="detkit:faster_rcnn_r50_fpn.yaml")
    assert config["model"]["neck"]["extra_level"] is True and names == config["model"]["class_names"]
    assert list(converted) == ["backbone.conv1.weight"]
    with pytest.raises(ConfigError, match="no recipe"):
        importer.convert(state, config_path="detkit:faster_rcnn_r51_fpn.yaml")


def test_cli_takes_a_recipe_name() -> None:
    from detkit.cli import main

    assert main(["train", "detkit:shapes_faster_rcnn.yaml", "train.lrr=0.1"]) == 2  # found, then the key's error
    assert main(["train", "detkit:no_such_recipe.yaml"]) == 2


# ----------------------------------------------------------------------------- paths


def test_relative_data_paths_resolve_against_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = write(tmp_path / "project" / "cfg" / "c.yaml", """
        data:
          train: {name: coco, ann_file: ../data/train.json, images: ../data/train}
          val: {name: voc, root: voc, split: test}
        train: {init_weights: weights/init.pt}
        output: {dir: runs/c}
    """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(user)
    folder = tmp_path / "project" / "cfg"
    assert config["data"]["train"] == {
        "name": "coco", "ann_file": str(tmp_path / "project" / "data" / "train.json"),
        "images": str(tmp_path / "project" / "data" / "train"),
    }
    assert config["data"]["val"] == {"name": "voc", "root": str(folder / "voc"), "split": "test"}
    assert config["train"]["init_weights"] == str(folder / "weights" / "init.pt")
    assert config["output"]["dir"] == "runs/c"  # outputs: relative to the current directory
    monkeypatch.chdir(tmp_path)
    assert load_config(Path("project/cfg/c.yaml")) == config  # the file's folder, however it is named


def test_base_paths_resolve_against_the_base_folder(tmp_path: Path) -> None:
    write(tmp_path / "shared" / "base.yaml", """
        data:
          train: {name: voc, root: data/voc, split: trainval}
          val: {name: voc, root: data/voc, split: test}
    """)
    child = write(tmp_path / "exp" / "child.yaml", """
        base: ../shared/base.yaml
        data:
          val: {name: voc, root: val_voc}
    """)
    config = load_config(child)
    assert config["data"]["train"]["root"] == str(tmp_path / "shared" / "data" / "voc")
    assert config["data"]["val"] == {"name": "voc", "root": str(tmp_path / "exp" / "val_voc"), "split": "test"}


def test_cwd_absolute_home_and_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = tmp_path / "abs" / "voc"
    user = write(tmp_path / "cfg" / "c.yaml", f"""
        data:
          train: {{name: voc, root: "${{cwd}}/data/voc"}}
          val: {{name: voc, root: {absolute}}}
        train: {{init_weights: "https://example.com/w.pth"}}
        output: {{dir: "${{cwd}}/runs/c"}}
    """)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    config = load_config(user)
    assert config["data"]["train"]["root"] == str(run_dir / "data" / "voc")
    assert config["data"]["val"]["root"] == str(absolute)
    assert config["train"]["init_weights"] == "https://example.com/w.pth"
    assert config["output"]["dir"] == str(run_dir / "runs" / "c")
    assert load_config(None, ["data.train={name: voc, root: '${cwd}'}"])["data"]["train"]["root"] == str(run_dir)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_config(None, ["train.init_weights=~/w.pt"])["train"]["init_weights"] == str(tmp_path / "home" / "w.pt")
    bad = write(tmp_path / "cfg" / "bad.yaml", 'data:\n  train: {name: voc, root: "${cwd}data"}\n')
    with pytest.raises(ConfigError, match=r"data.train.root: '\$\{cwd\}data': \$\{cwd\} must be followed by '/'"):
        load_config(bad)


def test_overrides_are_relative_to_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = write(tmp_path / "cfg" / "c.yaml", "data:\n  train: {name: voc, root: voc}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(user, [
        "data.val={name: voc, root: here/voc}", "data.train.root=data/voc", "train.init_weights=w.pt",
        "output.dir=runs/x", "model.backbone={name: resnet18, weights: not/a/path/key}",
    ])
    assert config["data"]["train"]["root"] == str(tmp_path / "data" / "voc")
    assert config["data"]["val"]["root"] == str(tmp_path / "here" / "voc")
    assert config["train"]["init_weights"] == str(tmp_path / "w.pt")
    assert config["output"]["dir"] == "runs/x"
    assert config["model"]["backbone"]["weights"] == "not/a/path/key"  # only the documented keys are paths


def test_only_the_path_keys_are_touched(tmp_path: Path) -> None:
    user = write(tmp_path / "c.yaml", """
        model:
          class_names: [a/b, c]
          backbone: {name: resnet18, weights: DEFAULT}
        data:
          train: {name: voc, root: voc, split: train/x, class_names: [x/y]}
    """)
    config = load_config(user)
    assert config["model"]["class_names"] == ["a/b", "c"]
    assert config["model"]["backbone"] == {"name": "resnet18", "weights": "DEFAULT"}
    assert config["data"]["train"] == {"name": "voc", "root": str(tmp_path / "voc"), "split": "train/x",
                                       "class_names": ["x/y"]}
    assert load_config(None)["output"] == DEFAULTS["output"]


def test_the_saved_config_is_self_contained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = write(tmp_path / "cfg" / "c.yaml", "base: detkit:bccd_faster_rcnn.yaml\ndata:\n  val: {root: val}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(user)
    assert all(os.path.isabs(config["data"][split]["root"]) for split in ("train", "val"))
    saved = tmp_path / "runs" / "x" / "config.yaml"
    save_config(config, saved)
    monkeypatch.chdir(tmp_path / "runs")
    assert load_config(saved) == config  # read from elsewhere: the same data


def test_classification_image_folders_resolve_against_the_file(tmp_path: Path) -> None:
    user = write(tmp_path / "cfg" / "c.yaml", """
        base: detkit:classify_lenet_digits.yaml
        data: {name: folder, root: images/train, test_root: /data/test}
    """)
    config = load_config(user, schema=CLASSIFY)
    assert config["data"]["root"] == str(tmp_path / "cfg" / "images" / "train")
    assert config["data"]["test_root"] == "/data/test"
    assert config["output"]["dir"] == "runs/lenet_digits"
