"""From config or checkpoint to ready objects: plugins, datasets, models.

This is where the CLI and Python users turn a resolved config into a model; no
other module reads configs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from detkit.backbones.fold import fold_frozen_batchnorm
from detkit.config import DEFAULTS, apply_overrides, merge, read_config_file
from detkit.data.base import DetectionDataset
from detkit.detectors import Detector, build_detector
from detkit.engine.checkpoint import load_checkpoint, load_state
from detkit.errors import ConfigError, DataError
from detkit.plugins import Plugins, load_plugins


def plugins_for(config: Mapping[str, Any] | None, cli_plugins: Sequence[str] = ()) -> Plugins:
    """Load the plugins named on the command line and in the config's ``plugins:``."""
    config_plugins = list(config.get("plugins") or []) if config else []
    return load_plugins(cli_plugins, config_plugins=config_plugins)


#: The dataset name of a held-out split of another ``data`` section (:func:`detkit.data.split.split_dataset`).
SPLIT_DATASET = "split"


def build_dataset(config: Mapping[str, Any], split: str, plugins: Plugins) -> DetectionDataset:
    """The dataset of ``data.<split>`` (``train`` or ``val``).

    A section ``{name: split, of: OTHER, fraction, seed, stratify}`` is a held-out
    fraction of the images of ``data.<OTHER>``, and ``data.<OTHER>`` is then the rest
    of them (:mod:`detkit.data.split`). The split's settings missing from ``config``
    are filled in with their defaults, so the resolved config a run writes names
    them all.
    """
    data = config["data"]
    spec = data.get(split)
    if not spec:
        raise ConfigError(f"config key 'data.{split}' is not set; give it a dataset, e.g. {{name: coco, ...}}")
    registry = plugins.registry
    if spec.get("name") == SPLIT_DATASET:
        of = _split_source(data, split)
        source = registry.build("dataset", data[of], key=f"data.{of}")
        return registry.build("dataset", spec, key=f"data.{split}", source=source, held_out=True)
    for other, other_spec in data.items():
        if (
            other != split
            and isinstance(other_spec, Mapping)
            and other_spec.get("name") == SPLIT_DATASET
            and _split_source(data, other) == split
        ):
            source = registry.build("dataset", spec, key=f"data.{split}")
            return registry.build("dataset", other_spec, key=f"data.{other}", source=source, held_out=False)
    return registry.build("dataset", spec, key=f"data.{split}")


def _split_source(data: Mapping[str, Any], split: str) -> str:
    """The section that ``data.<split>`` (a ``split`` dataset) splits; its defaults filled in."""
    from detkit.data.split import SPLIT_DEFAULTS

    spec = data[split]
    if isinstance(spec, dict):
        for key, value in SPLIT_DEFAULTS.items():
            spec.setdefault(key, value)
    of = str(spec.get("of", SPLIT_DEFAULTS["of"]))
    source = data.get(of) if of in ("train", "val") and of != split else None
    if not isinstance(source, Mapping) or not source or source.get("name") == SPLIT_DATASET:
        raise ConfigError(
            f"config key 'data.{split}.of' is {of!r}: a split dataset takes its images from another data section "
            f"that names a dataset (e.g. data.{split}: {{name: split, of: train, fraction: 0.2}} with data.train "
            "set)"
        )
    return of


def dataset_from_path(data: str, *, images: str | None = None, split: str | None = None) -> DetectionDataset:
    """A dataset from a path: a COCO json (with ``images``), a Pascal VOC root folder, or a YOLO dataset.

    A YOLO dataset is a ``data.yaml`` or a folder holding one. ``split`` is the VOC
    split (default ``test``) or the yaml's split (default ``val``).
    """
    from detkit.data.coco import CocoDataset
    from detkit.data.voc import VocDataset
    from detkit.data.yolo import YoloDataset

    path = Path(data)
    if path.is_dir():
        if (path / "Annotations").is_dir():
            return VocDataset(root=str(path), split=split or "test")
        if (path / "data.yaml").is_file() or (path / "data.yml").is_file():
            return YoloDataset(root=str(path), split=split or "val")
        raise DataError(
            f"{data!r} is a folder but neither a Pascal VOC root (no Annotations/ inside) nor a YOLO dataset "
            "(no data.yaml inside)"
        )
    if path.suffix.lower() in (".yaml", ".yml"):
        return YoloDataset(yaml=str(path), split=split or "val")
    if path.suffix.lower() != ".json":
        raise DataError(
            f"--data {data!r}: give a COCO instances .json file, a Pascal VOC root folder or a YOLO data.yaml"
        )
    return CocoDataset(ann_file=str(path), images=images)


@dataclass
class LoadedModel:
    """A detector with the config and class names it was built from."""

    model: nn.Module
    config: dict[str, Any]
    class_names: list[str]


def model_from_config(
    config: Mapping[str, Any], plugins: Plugins, *, class_names: Sequence[str]
) -> nn.Module:
    """Build the detector of a resolved config for ``class_names``."""
    return build_detector(config, plugins.registry, num_classes=len(class_names))


def model_and_components(
    config: Mapping[str, Any], plugins: Plugins, *, class_names: Sequence[str]
) -> tuple[nn.Module, dict[str, dict[str, str | None]]]:
    """:func:`model_from_config`, and which plugin provided each component it was built from.

    The map goes into checkpoints (``meta["components"]``), so that :func:`load_model`
    can name the plugin and distribution to install when one is missing.
    """
    start = len(plugins.registry.built)
    model = model_from_config(config, plugins, class_names=class_names)
    detector = str(config["model"].get("type", "two_stage"))
    return model, plugins.model_components(plugins.registry.built[start:], detector=detector)


def load_model(
    weights: str | os.PathLike[str],
    *,
    config_path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    cli_plugins: Sequence[str] = (),
    fold_norms: bool = True,
    channels_last: bool = False,
    winograd: bool = False,
    compile: bool = False,
) -> tuple[LoadedModel, Plugins]:
    """Rebuild a detector from a detkit checkpoint, ready for inference.

    The checkpoint's own config rebuilds the model; a ``config_path`` (and
    ``overrides``) replace its settings where they differ, e.g. test-time thresholds.
    With ``fold_norms`` frozen batch norms are folded into their convolutions (same
    outputs up to float rounding, faster; see :mod:`detkit.backbones.fold`). With
    ``channels_last`` the convolutions run on NHWC tensors
    (:meth:`detkit.detectors.Detector.use_channels_last`): faster on the CPU, but its
    rounding moves boxes by up to ~0.012 px against the NCHW path, so it is opt-in.
    With ``winograd`` the wide 3x3 convolutions run as Winograd on the CPU
    (:meth:`detkit.detectors.Detector.use_winograd`; also rounding, so opt-in too).
    With ``compile`` the backbone and neck go through ``torch.compile``
    (:meth:`detkit.detectors.Detector.compile_trunk`; the first call compiles). The
    config's ``model.channels_last``, ``model.winograd`` and ``model.compile`` turn
    them on as well.
    """
    checkpoint = load_checkpoint(weights)
    config = merge(DEFAULTS, checkpoint["config"])  # keys added since the checkpoint was written
    if config_path is not None:
        config = merge(config, read_config_file(config_path))
    if overrides:
        config = apply_overrides(config, overrides)
    class_names = list(checkpoint.get("class_names") or config["model"].get("class_names") or [])
    if not class_names:
        raise ConfigError(f"checkpoint {str(weights)!r} names no classes")
    plugins = plugins_for(config, cli_plugins)
    plugins.check_available(checkpoint.get("meta", {}).get("components") or {}, source=f"checkpoint {str(weights)!r}")
    plugins.hook.detkit_configure(config=config)
    model = model_from_config(config, plugins, class_names=class_names)
    load_state(model, checkpoint["model"], path=weights)
    if fold_norms:
        fold_frozen_batchnorm(model)
    if isinstance(model, Detector):
        if channels_last:  # model.channels_last and model.winograd: build_detector applied them already
            model.use_channels_last()
        if winograd:
            model.use_winograd()
        if compile or config["model"].get("compile"):
            model.compile_trunk()
    return LoadedModel(model.eval(), config, class_names), plugins
