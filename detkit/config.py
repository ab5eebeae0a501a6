"""YAML configs: one ``base:`` level, dotted overrides, unknown keys caught early.

A config is a plain nested dict. Fixed sections (``train``, ``model.preprocess``,
...) accept only the keys of :data:`DEFAULTS`; an unknown key is an error that
suggests the nearest known one. *Component* sections (:data:`COMPONENT_KEYS`) are
``{name: NAME, **kwargs}``: their keys are the keyword arguments of the registered
factory, checked when the component is built (:meth:`ComponentRegistry.build`).

Paths (:data:`PATH_KEYS`): a relative input path in a config file resolves against
that file's folder (a base's against the base's folder), ``${cwd}/...`` against the
current directory; outputs (:data:`OUTPUT_KEYS`) and ``key=value`` overrides are
relative to the current directory. ``detkit:NAME.yaml``, wherever a config file is
named, is a recipe shipped with detkit (:data:`RECIPES_DIR`, :func:`recipe_path`).

Modules never read a config: :mod:`detkit.detectors` is the one adapter that maps
a config to constructor arguments.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from detkit.errors import ConfigError, did_you_mean
from detkit.io import write_text

#: Sections whose keys belong to a registered factory (validated at build time).
COMPONENT_KEYS: frozenset[str] = frozenset(
    {
        "model.backbone",
        "model.neck",
        "model.proposer",
        "model.region_extractor",
        "model.roi_head",
        "model.mask_head",
        "model.dense_head",
        "model.postprocess",
        "data.train",
        "data.val",
    }
)

#: Every fixed key with its default. ``None`` means "unset".
DEFAULTS: dict[str, Any] = {
    "plugins": [],
    "model": {
        "type": "two_stage",
        "num_classes": None,
        "class_names": None,
        # CPU speed: NHWC convolutions (train, detect, eval, benchmark); torch.compile of backbone and neck
        # (detect, eval, benchmark)
        "channels_last": False,
        "compile": False,
        # Winograd F(4x4, 3x3) for wide 3x3 convolutions on the CPU (detect, eval, benchmark and train)
        "winograd": False,
        "preprocess": {
            "min_size": 800,
            "max_size": 1333,
            "size_divisible": 32,
            "pixel_mean": [0.485, 0.456, 0.406],
            "pixel_std": [0.229, 0.224, 0.225],
        },
        "backbone": {"name": "resnet50"},
        "neck": {"name": "fpn"},
        "proposer": {"name": "rpn"},
        "region_extractor": {"name": "multiscale_roi_align"},
        "roi_head": {"name": "fast_rcnn"},
        "mask_head": None,
        "dense_head": None,
        "postprocess": {
            "name": "nms",
            "score_thresh": 0.05,
            "nms_thresh": 0.5,
            "detections_per_img": 100,
            "min_box_size": 0.01,
        },
    },
    "data": {
        "train": None,
        "val": None,
        # training augmentation (detkit.data.augment), applied mosaic -> affine -> hsv -> hflip:
        # probabilities hflip and mosaic, hsv {h, s, v} and affine {degrees, translate, scale, shear}
        # (true: their defaults, see augment_settings), mosaic_off_last: the run's last fraction without mosaic;
        # size: downscale each image to that longer side first (mosaic tiles too), so large photos augment cheaply
        "augment": {"hflip": 0.5, "hsv": None, "affine": None, "mosaic": 0.0, "mosaic_off_last": 0.0, "size": None},
        "workers": 0,
        "check": "warn",  # strict | warn | off: detkit.data.check before training
    },
    "train": {
        "device": "auto",
        "seed": 0,
        "epochs": 12,
        "max_iters": None,
        "max_minutes": None,
        "batch_size": 2,
        "optimizer": "sgd",
        "lr": 0.02,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "schedule": "step",
        "steps": [0.67, 0.89],
        "gamma": 0.1,
        "warmup_iters": 500,
        "warmup_factor": 0.001,
        "clip_grad_norm": 10.0,
        "eval_period": 1,
        "log_period": 20,
        "threads": None,
        "init_weights": None,
        "init_weights_strict": True,
        "freeze": [],
        "param_groups": [],
        "freeze_norm_stats": False,
        "precision": "fp32",  # fp32 | fp16 | bf16 (autocast; a grad scaler under fp16)
        "accumulate": 1,  # batches per optimizer step
        "ema": None,  # null, true or {decay: 0.9998, tau: 2000}: evaluate and save a moving average
        "checkpoint_period": 0,  # iterations between last.pt writes (0: at evaluations only)
        "keep_checkpoints": 0,  # also keep iter_NNNNNNN.pt of the last K periodic writes
        "resume": None,  # auto: continue output.dir when it holds last.pt
        "deterministic": False,  # deterministic algorithms (and cuDNN) for repeatable runs
        "sync_bn": False,  # SyncBatchNorm across the GPUs of a distributed run
        "find_unused_parameters": False,  # DDP: parameters may get no gradient in a step
    },
    "eval": {"batch_size": 2, "max_images": None, "backend": "faster"},  # backend: faster | pycocotools
    "output": {"dir": "runs/train"},
}


#: The recipes shipped with detkit (package data; a checkout's top-level ``configs`` links here).
RECIPES_DIR: Path = Path(__file__).resolve().parent / "configs"

#: ``detkit:NAME.yaml`` in place of a config file names the shipped recipe ``NAME.yaml``.
RECIPE_PREFIX = "detkit:"

#: A path value that starts with this is relative to the current directory: ``${cwd}/runs/x``.
CWD = "${cwd}"

#: Keys that hold input paths. A relative value in a config file resolves against the
#: file's folder, one given as an override against the current directory; the resolved
#: config holds absolute paths. ``data.train`` and ``data.val`` belong to the dataset's
#: factory: ``root``, ``ann_file``, ``images`` and ``yaml`` are the built-in datasets' path arguments
#: (a dataset plugin that reads a path names its argument one of these).
PATH_KEYS: frozenset[str] = frozenset(
    f"data.{split}.{key}" for split in ("train", "val") for key in ("root", "ann_file", "images", "yaml")
) | {"train.init_weights"}

#: Keys that hold output paths: relative to the current directory, in a file too.
OUTPUT_KEYS: frozenset[str] = frozenset({"output.dir"})


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, plus floats written without a dot (``1e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


@dataclass(frozen=True)
class Schema:
    """What a kind of config may hold: fixed keys with defaults, and component sections.

    Detection configs use :data:`DETECTION`; other tasks (classification) define their
    own and pass it to :func:`load_config` and friends.
    """

    defaults: Mapping[str, Any]
    components: frozenset[str]
    #: dotted keys of input paths (relative to the config file that sets them)
    paths: frozenset[str] = frozenset()
    #: dotted keys of output paths (relative to the current directory)
    outputs: frozenset[str] = frozenset()

    def is_component(self, path: str) -> bool:
        return path in self.components


#: The schema of detection configs (``detkit train``, ``eval``, ``detect``).
DETECTION = Schema(DEFAULTS, COMPONENT_KEYS, PATH_KEYS, OUTPUT_KEYS)


def list_recipes() -> list[str]:
    """The file names of the recipes shipped with detkit (``detkit:NAME.yaml`` names one)."""
    return sorted(p.name for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The file of the shipped recipe ``name`` (``"bccd_faster_rcnn.yaml"``; the suffix may be left off).

    Raises:
        ConfigError: no such recipe (the message lists them, with the nearest name).
    """
    file = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    recipes = list_recipes()
    if file not in recipes or "/" in name or os.sep in name:
        stems = [Path(r).stem for r in recipes]  # compared without the suffix that every name shares
        raise ConfigError(
            f"detkit ships no recipe {name!r}{did_you_mean(Path(file).stem, stems)}; "
            f"its recipes ({RECIPE_PREFIX}NAME.yaml): {', '.join(recipes)}"
        )
    return RECIPES_DIR / file


def config_file(path: str | os.PathLike[str]) -> Path:
    """The file a config path names: ``detkit:NAME.yaml`` is a shipped recipe, anything else itself."""
    text = os.fspath(path)
    if text.startswith(RECIPE_PREFIX):
        return recipe_path(text[len(RECIPE_PREFIX) :])
    return Path(text)


def resolve_path(value: str, folder: str | os.PathLike[str] | None, *, key: str = "path") -> str:
    """One path value of a config, resolved by the rule of :data:`PATH_KEYS`.

    ``${cwd}/...`` is made absolute against the current directory, ``~`` expanded;
    absolute paths and URLs (``scheme://``) stay as they are; any other relative
    path is joined to ``folder`` (``None``: left relative, i.e. to the current directory).
    """
    if value.startswith(CWD):
        rest = value[len(CWD) :]
        if rest and not rest.startswith(("/", os.sep)):
            raise ConfigError(f"{key}: {value!r}: {CWD} must be followed by '/' (e.g. {CWD}/runs/data)")
        return os.path.normpath(os.path.join(os.getcwd(), rest.lstrip("/" + os.sep)))
    if not value or "://" in value:
        return value
    if value.startswith("~"):
        return os.path.normpath(os.path.expanduser(value))
    if os.path.isabs(value) or folder is None:
        return value
    return os.path.normpath(os.path.join(os.fspath(folder), value))


def resolve_paths(
    config: Mapping[str, Any], folder: str | os.PathLike[str] | None, *, schema: Schema = DETECTION
) -> dict[str, Any]:
    """A copy of ``config`` (whole or partial) with its path values resolved (:func:`resolve_path`).

    Input paths (``schema.paths``) resolve against ``folder``: the config file's folder,
    or the current directory for overrides; outputs (``schema.outputs``) only expand ``${cwd}``.
    """
    out = copy.deepcopy(dict(config))
    for dotted, relative_to in [*((k, folder) for k in schema.paths), *((k, None) for k in schema.outputs)]:
        *parents, last = dotted.split(".")
        node: Any = out
        for k in parents:
            node = node.get(k) if isinstance(node, Mapping) else None
        if isinstance(node, dict) and isinstance(node.get(last), str):
            node[last] = resolve_path(node[last], relative_to, key=dotted)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from exc
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def merge(
    base: Mapping[str, Any], update: Mapping[str, Any], *, path: str = "", schema: Schema = DETECTION
) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``.

    Component sections are replaced whole when ``name`` changes (the old keys belong
    to another factory) and merged key by key otherwise.
    """
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        sub = f"{path}.{key}" if path else key
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            if schema.is_component(sub) and "name" in value and value["name"] != old.get("name"):
                out[key] = copy.deepcopy(dict(value))
            else:
                out[key] = merge(old, value, path=sub, schema=schema)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate(config: Mapping[str, Any], *, source: str = "config", schema: Schema = DETECTION) -> None:
    """Raise :class:`ConfigError` for keys that the schema's defaults do not know."""

    def walk(node: Mapping[str, Any], known: Mapping[str, Any], path: str) -> None:
        for key, value in node.items():
            sub = f"{path}.{key}" if path else key
            if key not in known:
                raise ConfigError(
                    f"{source}: unknown key {sub!r}{did_you_mean(key, known)}; "
                    f"known keys{' under ' + repr(path) if path else ''}: {', '.join(sorted(known))}"
                )
            if schema.is_component(sub):
                # a section without a name keeps the default's component (and is merged onto it)
                named_default = isinstance(known[key], Mapping) and "name" in known[key]
                if value is not None and not (isinstance(value, Mapping) and ("name" in value or named_default)):
                    raise ConfigError(f"{source}: {sub!r} must be a mapping with a 'name' key, or null")
                continue
            if isinstance(known[key], Mapping):
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{source}: {sub!r} must be a mapping, got {value!r}")
                walk(value, known[key], sub)

    walk(config, {**schema.defaults, "base": None}, "")


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=1"`` -> (``["a", "b"]``, ``1``); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value (e.g. train.lr=0.01)")
    key, _, raw = item.partition("=")
    if not key.strip():
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
    return key.strip().split("."), value


def apply_overrides(
    config: dict[str, Any], overrides: Sequence[str], *, schema: Schema = DETECTION
) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; keys are checked like file keys."""
    out = copy.deepcopy(config)
    for item in overrides:
        keys, value = parse_override(item)
        value = _dig(resolve_paths(_nested(keys, value), os.getcwd(), schema=schema), keys)  # paths: cwd-relative
        node: dict[str, Any] = out
        for i, k in enumerate(keys[:-1]):
            prefix = ".".join(keys[: i + 1])
            if not isinstance(node.get(k), dict):
                if node.get(k) is None and any(c == prefix or c.startswith(prefix + ".") for c in schema.components):
                    node[k] = {}
                else:
                    validate(_nested(keys, value), source=f"override {item!r}", schema=schema)
                    raise ConfigError(f"override {item!r}: {prefix!r} is not a section")
            node = node[k]
        if keys[-1] == "name" and schema.is_component(".".join(keys[:-1])) and node.get("name") != value:
            node.clear()  # another factory: the old keys belong to the old one (as in merge)
        section, old = keys[-1], node.get(keys[-1])
        if schema.is_component(".".join(keys)) and isinstance(value, Mapping) and isinstance(old, Mapping):
            # a section given whole merges as in a file: another name replaces it, no name or the same one
            # changes the keys it gives
            value = merge({section: old}, {section: value}, path=".".join(keys[:-1]), schema=schema)[section]
        node[section] = value
        validate(out, source=f"override {item!r}", schema=schema)
    return out


def _nested(keys: list[str], value: Any) -> dict[str, Any]:
    node: Any = value
    for k in reversed(keys):
        node = {k: node}
    return node


def _dig(tree: Mapping[str, Any], keys: list[str]) -> Any:
    node: Any = tree
    for k in keys:
        node = node[k]
    return node


def read_config_file(path: str | os.PathLike[str], *, schema: Schema = DETECTION) -> dict[str, Any]:
    """A config file merged over its ``base:`` (if any), validated, without defaults.

    ``path`` (and ``base:``) may be ``detkit:NAME.yaml``, a shipped recipe. Path values
    are resolved (:func:`resolve_paths`), each against the folder of the file that sets it.
    """
    file = config_file(path)
    data = _read_yaml(file)
    base = data.pop("base", None)
    if base is None:
        validate(data, source=str(file), schema=schema)
        return resolve_paths(data, _folder(file), schema=schema)
    base_text = str(base)
    if base_text.startswith(RECIPE_PREFIX):
        try:
            base_path = config_file(base_text)
        except ConfigError as exc:
            raise ConfigError(f"{file}: base: {exc}") from None
    else:
        base_path = (file.parent / base_text).resolve()
    base_data = _read_yaml(base_path)
    if "base" in base_data:
        raise ConfigError(
            f"config {str(base_path)!r} (the base of {str(file)!r}) has a 'base:' of its own; "
            "detkit allows one base level: merge the two bases into one file"
        )
    validate(base_data, source=str(base_path), schema=schema)
    # a component section without a name merges onto the base's (as onto a default's)
    over_base = dataclasses.replace(schema, defaults=merge(schema.defaults, base_data, schema=schema))
    validate(data, source=str(file), schema=over_base)
    base_data = resolve_paths(base_data, _folder(base_path), schema=schema)
    return merge(base_data, resolve_paths(data, _folder(file), schema=schema), schema=schema)


def _folder(file: Path) -> Path:
    """The folder that relative paths in ``file`` are relative to (absolute, links resolved)."""
    return file.parent.resolve()


def load_config(
    path: str | os.PathLike[str] | None, overrides: Sequence[str] = (), *, schema: Schema = DETECTION
) -> dict[str, Any]:
    """Read a config file (and its ``base:``), fill defaults, apply overrides.

    Args:
        path: a YAML file (or ``detkit:NAME.yaml``, a shipped recipe), or ``None`` for
            the defaults alone.
        overrides: ``key.path=value`` strings, applied last (paths relative to the
            current directory).

    Returns:
        The resolved config: every key of the schema's defaults is present, input
        paths absolute.
    """
    config = copy.deepcopy(dict(schema.defaults))
    if path is not None:
        config = merge(config, read_config_file(path, schema=schema), schema=schema)
    return apply_overrides(config, overrides, schema=schema)


def dump_config(config: Mapping[str, Any]) -> str:
    """The config as YAML text."""
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)


def save_config(config: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Atomically write the resolved config (written beside every run's outputs)."""
    write_text(path, dump_config(config))


def get(config: Mapping[str, Any], dotted: str) -> Any:
    """``get(cfg, "train.lr")``."""
    node: Any = config
    for k in dotted.split("."):
        node = node[k]
    return node


#: ``data.augment.hsv`` keys with their defaults (YOLOv5's gains); ``hsv: true`` means these.
AUGMENT_HSV: dict[str, Any] = {"h": 0.015, "s": 0.7, "v": 0.4}

#: ``data.augment.affine`` keys with their defaults; ``affine: true`` means these. ``scale`` is
#: ``[low, high]`` or one number ``k`` for ``[1 - k, 1 + k]``.
AUGMENT_AFFINE: dict[str, Any] = {"degrees": 0.0, "translate": 0.1, "scale": [0.5, 1.5], "shear": 0.0}


def augment_settings(augment: Mapping[str, Any] | None) -> dict[str, Any]:
    """``data.augment`` checked, missing keys filled with their defaults.

    Returns ``{hflip, hsv, affine, mosaic, mosaic_off_last, size}``: probabilities and fractions
    as floats, ``hsv`` as ``{h, s, v}`` or None, ``affine`` as ``{degrees, translate,
    scale: [low, high], shear}`` or None (``true`` gives :data:`AUGMENT_HSV` /
    :data:`AUGMENT_AFFINE`, a mapping overrides some of them).

    Raises:
        ConfigError: a value out of range or of the wrong type, or an unknown key, named
            with its dotted key.
    """
    given = {**DEFAULTS["data"]["augment"], **(augment or {})}
    out: dict[str, Any] = {
        "hflip": _fraction(given["hflip"], "data.augment.hflip"),
        "mosaic": _fraction(given["mosaic"], "data.augment.mosaic"),
        "mosaic_off_last": _fraction(given["mosaic_off_last"], "data.augment.mosaic_off_last"),
        "size": given["size"],
    }
    size = given["size"]
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ConfigError(f"data.augment.size must be null or a positive number of pixels, got {size!r}")
    hsv = _augment_section(given["hsv"], "hsv", AUGMENT_HSV)
    if hsv is not None:
        hsv = {key: _fraction(value, f"data.augment.hsv.{key}") for key, value in hsv.items()}
    out["hsv"] = hsv
    affine = _augment_section(given["affine"], "affine", AUGMENT_AFFINE)
    if affine is not None:
        degrees = _number(affine["degrees"], "data.augment.affine.degrees")
        translate = _number(affine["translate"], "data.augment.affine.translate")
        shear = _number(affine["shear"], "data.augment.affine.shear")
        if not 0 <= degrees <= 180:
            raise ConfigError(f"data.augment.affine.degrees must be in [0, 180], got {affine['degrees']!r}")
        if not 0 <= translate <= 0.5:
            raise ConfigError(f"data.augment.affine.translate must be in [0, 0.5], got {affine['translate']!r}")
        if not 0 <= shear < 90:
            raise ConfigError(f"data.augment.affine.shear must be in [0, 90) degrees, got {affine['shear']!r}")
        affine = {"degrees": degrees, "translate": translate, "scale": _scale_range(affine["scale"]), "shear": shear}
    out["affine"] = affine
    return out


def _augment_section(value: Any, name: str, defaults: Mapping[str, Any]) -> dict[str, Any] | None:
    key = f"data.augment.{name}"
    example = "{" + ", ".join(f"{k}: {v}" for k, v in defaults.items()) + "}"
    if value is None or value is False:
        return None
    if value is True:
        return dict(defaults)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be null, true or a mapping like {example}, got {value!r}")
    for k in value:
        if k not in defaults:
            raise ConfigError(
                f"{key}: unknown key {k!r}{did_you_mean(str(k), defaults)}; it accepts {', '.join(defaults)}"
            )
    return {**defaults, **value}


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return float(value)


def _fraction(value: Any, key: str) -> float:
    number = _number(value, key)
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"{key} must be in [0, 1], got {value!r}")
    return number


def _scale_range(value: Any) -> list[float]:
    key = "data.augment.affine.scale"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0 <= value < 1:
            raise ConfigError(f"{key}: one number k means [1 - k, 1 + k] and must be in [0, 1), got {value!r}")
        return [1.0 - float(value), 1.0 + float(value)]
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        low, high = _number(value[0], key), _number(value[1], key)
        if 0 < low <= high:
            return [low, high]
    raise ConfigError(f"{key} must be [low, high] with 0 < low <= high, or one number k in [0, 1), got {value!r}")
