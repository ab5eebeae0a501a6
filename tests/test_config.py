"""Config files: defaults, one base level, dotted overrides, errors that name the key or file."""

from __future__ import annotations

import copy
from pathlib import Path
from textwrap import dedent

import pytest

from detkit.config import DEFAULTS, load_config, merge, save_config
from detkit.detectors import build_detector
from detkit.errors import ConfigError
from detkit.plugins import ComponentRegistry, load_plugins
from detkit.stages import Neck

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- defaults


def test_no_file_gives_the_defaults_as_a_copy() -> None:
    config = load_config(None)
    assert config == DEFAULTS
    config["train"]["lr"] = 123.0
    config["model"]["preprocess"]["pixel_mean"].append(0.0)
    assert DEFAULTS["train"]["lr"] == 0.02
    assert DEFAULTS["model"]["preprocess"]["pixel_mean"] == [0.485, 0.456, 0.406]


def test_file_keys_over_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", """
        model:
          preprocess: {min_size: 128}
        train: {lr: 0.1, epochs: 3}
    """)
    config = load_config(path)
    assert config["train"]["lr"] == 0.1 and config["train"]["epochs"] == 3
    assert config["train"]["momentum"] == 0.9  # the rest of the section is filled
    assert config["model"]["preprocess"] == {**DEFAULTS["model"]["preprocess"], "min_size": 128}
    assert config["model"]["proposer"] == {"name": "rpn"}
    assert config["output"] == {"dir": "runs/train"}
    assert set(config) == set(DEFAULTS)


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path / "empty.yaml", "# nothing\n")) == DEFAULTS


# ----------------------------------------------------------------------------- base


def test_one_base_level_merges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "base.yaml", """
        model:
          backbone: {name: resnet18, width: 16, frozen_stages: 0}
          proposer: {name: rpn, nms_thresh: 0.6, pre_nms_top_n_test: 300}
          postprocess: {score_thresh: 0.3}
        train: {lr: 0.01, epochs: 3}
    """)
    child = write(tmp_path / "sub" / "child.yaml", """
        base: ../base.yaml
        model:
          backbone: {name: resnet34}
          proposer: {name: rpn, nms_thresh: 0.5}
        train: {lr: 0.02}
    """)
    monkeypatch.chdir(tmp_path / "sub")  # the base is found relative to the file, not the cwd
    config = load_config(Path("child.yaml").resolve())
    # a new name replaces the section: the base's resnet18 keys belong to another factory
    assert config["model"]["backbone"] == {"name": "resnet34"}
    # the same name merges key by key
    assert config["model"]["proposer"] == {"name": "rpn", "nms_thresh": 0.5, "pre_nms_top_n_test": 300}
    # fixed sections merge key by key over base over defaults
    assert config["train"]["lr"] == 0.02 and config["train"]["epochs"] == 3
    assert config["train"]["momentum"] == DEFAULTS["train"]["momentum"]
    assert config["model"]["postprocess"] == {**DEFAULTS["model"]["postprocess"], "score_thresh": 0.3}
    assert "base" not in config
    assert load_config(child) == config


def test_base_of_a_base_is_an_error_naming_both(tmp_path: Path) -> None:
    write(tmp_path / "root.yaml", "train: {lr: 1.0}\n")
    write(tmp_path / "middle.yaml", "base: root.yaml\ntrain: {epochs: 2}\n")
    child = write(tmp_path / "child.yaml", "base: middle.yaml\n")
    with pytest.raises(ConfigError, match="one base level") as info:
        load_config(child)
    assert str(tmp_path / "middle.yaml") in str(info.value)
    assert str(child) in str(info.value)


def test_missing_base_names_the_base_file(tmp_path: Path) -> None:
    child = write(tmp_path / "child.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(child)
    assert str(tmp_path / "nowhere.yaml") in str(info.value)


def test_unknown_key_in_base_names_the_base(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "train: {epoch: 3}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch' \(did you mean 'epochs'\?\)") as info:
        load_config(child)
    assert str(info.value).startswith(str(tmp_path / "base.yaml"))


def test_merge_does_not_modify_its_inputs() -> None:
    base = {"model": {"proposer": {"name": "rpn", "nms_thresh": 0.7}}, "train": {"steps": [1, 2]}}
    update = {"model": {"proposer": {"name": "rpn", "nms_thresh": 0.5}}, "train": {"lr": 1.0}}
    before = copy.deepcopy((base, update))
    merged = merge(base, update)
    assert merged == {"model": {"proposer": {"name": "rpn", "nms_thresh": 0.5}}, "train": {"steps": [1, 2], "lr": 1.0}}
    merged["train"]["steps"].append(3)
    assert (base, update) == before


def test_shipped_configs_load() -> None:
    from detkit.classify.train import SCHEMA as CLASSIFY

    for path in sorted(CONFIGS.glob("*.yaml")):
        schema = CLASSIFY if path.name.startswith("classify_") else None
        config = load_config(path, schema=schema) if schema else load_config(path)
        assert set(config) == set(schema.defaults if schema else DEFAULTS), path


# ----------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("train.epochs=3", "epochs", 3),
        ("train.lr=0.001", "lr", 0.001),
        ("train.weight_decay=1.0e-4", "weight_decay", 1e-4),
        ("train.steps=[0.5, 0.75]", "steps", [0.5, 0.75]),
        ("train.max_iters=null", "max_iters", None),
        ("train.max_iters=", "max_iters", None),
        ("train.optimizer=adamw", "optimizer", "adamw"),
        ("train.device='0'", "device", "0"),
        ("train.threads=4", "threads", 4),
    ],
)
def test_override_values_are_yaml(override: str, key: str, expected: object) -> None:
    value = load_config(None, [override])["train"][key]
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("text", ["1e-4", "1E-4", "+1e-4"])
def test_scientific_notation_is_a_float(tmp_path: Path, text: str) -> None:
    assert load_config(None, [f"train.weight_decay={text}"])["train"]["weight_decay"] == 1e-4
    path = write(tmp_path / "c.yaml", f"train: {{weight_decay: {text}}}\n")
    assert load_config(path)["train"]["weight_decay"] == 1e-4


def test_overrides_apply_in_order_over_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "train: {lr: 0.1}\noutput: {dir: runs/a}\n")
    config = load_config(path, ["train.lr=0.2", "output.dir=runs/b c", "train.lr=0.3"])
    assert config["train"]["lr"] == 0.3
    assert config["output"]["dir"] == "runs/b c"


def test_override_component_sections(tmp_path: Path) -> None:
    config = load_config(None, [
        "model.proposer.anchor_sizes=[[8], [16]]",
        "model.mask_head.name=my_masks",  # creates the section that defaults to null
        "model.mask_head.layers=4",
        "model.neck=null",
        "model.backbone={name: resnet18, width: 16}",
    ])
    assert config["model"]["proposer"] == {"name": "rpn", "anchor_sizes": [[8], [16]]}
    assert config["model"]["mask_head"] == {"name": "my_masks", "layers": 4}
    assert config["model"]["neck"] is None
    assert config["model"]["backbone"] == {"name": "resnet18", "width": 16}


def test_override_name_replaces_the_section_like_a_file_does() -> None:
    config = load_config(CONFIGS / "shapes_faster_rcnn.yaml", ["model.proposer.name=other"])
    assert config["model"]["proposer"] == {"name": "other"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=0.1", r"unknown key 'train.lrr' \(did you mean 'lr'\?\)"),
        ("trian.lr=0.1", r"unknown key 'trian' \(did you mean 'train'\?\)"),
        ("ouptut=1", r"unknown key 'ouptut' \(did you mean 'output'\?\)"),
        ("model.preprocess.min_sise=3", r"unknown key 'model.preprocess.min_sise' \(did you mean 'min_size'\?\)"),
        ("model.propser.name=rpn", r"unknown key 'model.propser' \(did you mean 'proposer'\?\)"),
    ],
)
def test_unknown_key_in_override(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [override])
    assert f"override {override!r}" in str(info.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr", r"must look like key.path=value"),
        ("=3", r"empty key"),
        ("train.steps=[1, 2", r"not valid YAML"),
        ("train.lr.x=1", r"'train.lr' is not a section"),
        ("model.proposer=rpn", r"'model.proposer' must be a mapping with a 'name' key"),
        ("model.proposer=[1, 2]", r"'model.proposer' must be a mapping with a 'name' key"),
    ],
)
def test_malformed_override(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [override])
    assert repr(override) in str(info.value)


# ----------------------------------------------------------------------------- file errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trian: {lr: 0.1}\n", r"unknown key 'trian' \(did you mean 'train'\?\)"),
        ("train: {lrr: 0.1}\n", r"unknown key 'train.lrr' \(did you mean 'lr'\?\)"),
        (
            "model: {preprocess: {max_sise: 100}}\n",
            r"unknown key 'model.preprocess.max_sise' \(did you mean 'max_size'\?\)",
        ),
        ("model: {proposer: rpn}\n", r"'model.proposer' must be a mapping with a 'name' key"),
        ("train: 3\n", r"'train' must be a mapping"),
        ("- a\n- b\n", r"must hold a mapping at the top level"),
        ("'just a string'\n", r"must hold a mapping at the top level"),
        ("model: [1, 2\n", r"is not valid YAML"),
        ("train:\n  lr: 1\n lr: 2\n", r"is not valid YAML"),
    ],
)
def test_bad_file_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in str(info.value)


# ----------------------------------------------------------------------------- component keys


class Toy(Neck):
    """A factory with a known schema: ``in_channels`` comes from detkit, the rest from config."""

    def __init__(self, *, in_channels: int, out_channels: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if dropout >= 1:
            raise ValueError(f"dropout must be < 1, got {dropout}")
        self.in_channels, self.width, self.dropout = in_channels, out_channels, dropout
        self.out_channels, self.out_strides = {"p3": out_channels}, {"p3": 8}


@pytest.fixture
def toy_registry() -> ComponentRegistry:
    registry = ComponentRegistry()
    registry.register("neck", "toy", Toy, plugin="tests")
    registry.register("neck", "other", Toy, plugin="tests")
    return registry


def test_component_keys_are_free_at_load_and_checked_at_build(
    tmp_path: Path, toy_registry: ComponentRegistry
) -> None:
    path = write(tmp_path / "c.yaml", "model:\n  neck: {name: toy, out_chanels: 8}\n")
    config = load_config(path)  # any key is accepted here: the factory's signature decides
    assert config["model"]["neck"] == {"name": "toy", "out_chanels": 8}
    with pytest.raises(ConfigError) as info:
        toy_registry.build("neck", config["model"]["neck"], key="model.neck", in_channels=3)
    message = str(info.value)
    assert "config key 'model.neck'" in message
    assert "unknown key 'out_chanels' for neck 'toy' (did you mean 'out_channels'?)" in message
    assert "it accepts: dropout, out_channels (`detkit plugins --describe neck toy`" in message  # not in_channels


def test_build_passes_config_and_detkit_arguments(tmp_path: Path, toy_registry: ComponentRegistry) -> None:
    config = load_config(None, ["model.neck={name: toy, out_channels: 8}"])
    neck = toy_registry.build("neck", config["model"]["neck"], key="model.neck", in_channels=3, in_strides={"c": 4})
    assert (neck.in_channels, neck.width, neck.dropout) == (3, 8, 0.0)  # in_strides not accepted: not passed
    with pytest.raises(ConfigError, match=r"'model.neck': 'in_channels' is set by detkit"):
        toy_registry.build("neck", {"name": "toy", "in_channels": 5}, key="model.neck", in_channels=3)
    with pytest.raises(ConfigError, match=r"'model.neck' needs a 'name' \(one of: other, toy\)"):
        toy_registry.build("neck", {"out_channels": 5}, key="model.neck", in_channels=3)
    with pytest.raises(ConfigError, match=r"'model.neck': cannot build neck 'toy': dropout must be < 1, got 2"):
        toy_registry.build("neck", {"name": "toy", "dropout": 2}, key="model.neck", in_channels=3)


def test_detector_build_reports_the_config_key() -> None:
    plugins = load_plugins(autoload=False)
    config = load_config(CONFIGS / "shapes_faster_rcnn.yaml", ["model.backbone.widht=8"])
    with pytest.raises(ConfigError, match=r"config key 'model.backbone': unknown key 'widht' for backbone 'resnet18' "
                                          r"\(did you mean 'width'\?\)"):
        build_detector(config, plugins.registry, num_classes=4)
    config = load_config(CONFIGS / "shapes_faster_rcnn.yaml", ["model.proposer.anchor_size=[[8]]"])
    with pytest.raises(ConfigError, match=r"config key 'model.proposer': unknown key 'anchor_size' for proposer "
                                          r"'rpn' \(did you mean 'anchor_sizes'\?\)"):
        build_detector(config, plugins.registry, num_classes=4)


# ----------------------------------------------------------------------------- save


def test_save_config_round_trips(tmp_path: Path) -> None:
    config = load_config(CONFIGS / "shapes_faster_rcnn.yaml", [
        "train.lr=0.005", "train.steps=[0.5, 0.9]", "model.mask_head={name: m, dims: [1, 2]}",
        "output.dir=runs/x y", "train.device='1'",
    ])
    out = tmp_path / "run" / "config.yaml"
    save_config(config, out)
    assert load_config(out) == config
    assert sorted(p.name for p in out.parent.iterdir()) == ["config.yaml"]  # no temp file left
    # saving again replaces the file
    config["train"]["lr"] = 0.5
    save_config(config, out)
    assert load_config(out)["train"]["lr"] == 0.5


@pytest.mark.parametrize(
    "name", sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("classify_"))
)
def test_shipped_detection_configs_build_their_model(name: str) -> None:
    from detkit.engine.build import model_from_config, plugins_for

    config = load_config(CONFIGS / name)
    plugins = plugins_for(config)
    plugins.hook.detkit_configure(config=config)
    model = model_from_config(config, plugins, class_names=["a", "b"])
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_component_section_given_whole_merges_like_a_file_section() -> None:
    config = load_config(None, ["model.proposer={name: rpn, nms_thresh: 0.6}", "model.proposer={anchor_sizes: [[8]]}"])
    assert config["model"]["proposer"] == {"name": "rpn", "nms_thresh": 0.6, "anchor_sizes": [[8]]}  # merged
    config = load_config(None, ["model.proposer={name: rpn, nms_thresh: 0.6}", "model.proposer={name: grid}"])
    assert config["model"]["proposer"] == {"name": "grid"}  # another component: the old keys are dropped
    config = load_config(None, ["model.postprocess={score_thresh: 0.3}"])  # no name: the default's, nms
    assert config["model"]["postprocess"] == {**DEFAULTS["model"]["postprocess"], "score_thresh": 0.3}
