"""From a resolved detection config to a finished run, and the other whole jobs the commands start.

:func:`run_training` is ``detkit train`` without the argument parsing: seeding and
threads, plugins and their ``detkit_configure`` check, the data check (``data.check``),
datasets and class names, the model (and ``train.init_weights``), the training loader,
the evaluation callback and the :class:`~detkit.engine.trainer.Trainer`. :func:`import_torchvision` is
``detkit import-torchvision``; :func:`proposals_report` assembles what
``detkit proposals`` writes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkit.data.base import DetectionDataset
from detkit.data.check import check_before_training
from detkit.data.loader import build_loader
from detkit.data.transforms import RandomHorizontalFlip
from detkit.device import resolve_device
from detkit.engine.build import build_dataset, model_and_components, plugins_for
from detkit.engine.checkpoint import load_state, save_checkpoint
from detkit.engine.evaluate import evaluate_dataset
from detkit.engine.trainer import EvaluateFn, Trainer
from detkit.engine.transfer import init_weights
from detkit.errors import DetkitError
from detkit.plugins import load_plugins
from detkit.weights import read_state_dict


def seed_and_threads(train: Mapping[str, Any]) -> None:
    """Seed torch with ``train.seed`` and cap its CPU threads at ``train.threads`` (when set)."""
    torch.manual_seed(int(train["seed"]))
    if train.get("threads"):
        torch.set_num_threads(int(train["threads"]))


def train_loader(config: Mapping[str, Any], dataset: DetectionDataset) -> Any:
    """The shuffled training loader of ``config`` (batch size, workers, horizontal flips, seed)."""
    train, data = config["train"], config["data"]
    hflip = float(data["augment"]["hflip"])
    return build_loader(
        dataset,
        batch_size=int(train["batch_size"]),
        shuffle=True,
        workers=int(data["workers"]),
        transforms=RandomHorizontalFlip(p=hflip) if hflip > 0 else None,
        seed=int(train["seed"]),
        drop_last=True,
    )


def coco_evaluation(
    config: Mapping[str, Any], dataset: DetectionDataset, results_path: Path, *, progress: bool
) -> EvaluateFn:
    """The trainer's evaluation: COCO metrics of a model on ``dataset`` (``eval.batch_size``, ``eval.max_images``)."""
    settings = config["eval"]

    def evaluate(model: nn.Module) -> dict[str, Any]:
        return evaluate_dataset(
            model,
            dataset,
            batch_size=int(settings["batch_size"]),
            max_images=settings.get("max_images"),
            results_path=results_path,
            progress=progress,
        )

    return evaluate


def run_training(
    config: dict[str, Any], cli_plugins: Sequence[str] = (), *, progress: bool = True
) -> dict[str, Any]:
    """Train and evaluate the detector a resolved config describes; returns the final metrics.

    ``config["model"]`` gets the class names (from the training set unless the config
    names them) and their count; the output folder is ``output.dir``.
    """
    train = config["train"]
    resolve_device(str(train["device"]))  # fail on a bad device before any work (datasets may be generated)
    seed_and_threads(train)
    plugins = plugins_for(config, cli_plugins)
    plugins.hook.detkit_configure(config=config)
    out_dir = Path(config["output"]["dir"])
    check_before_training(config, plugins.registry, out_dir=out_dir, progress=progress)  # data.check
    train_set = build_dataset(config, "train", plugins)
    val_set = build_dataset(config, "val", plugins)
    class_names = list(config["model"].get("class_names") or train_set.class_names)
    config["model"]["class_names"] = class_names
    config["model"]["num_classes"] = len(class_names)
    model, components = model_and_components(config, plugins, class_names=class_names)
    if train.get("init_weights"):
        report = init_weights(
            model, str(train["init_weights"]), class_names=class_names, registry=plugins.registry,
            strict=bool(train["init_weights_strict"]),
        )
        print(report.summary())
    trainer = Trainer(
        model=model,
        train_loader=train_loader(config, train_set),
        evaluate=coco_evaluation(config, val_set, out_dir / "results.json", progress=progress),
        out_dir=out_dir,
        config=config,
        class_names=class_names,
        checkpoint_meta={"components": components},
        progress=progress,
    )
    return dict(trainer.train().final_metrics)


def import_torchvision(
    name: str,
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    config_path: str | None = None,
    cli_plugins: Sequence[str] = (),
) -> list[str]:
    """Convert torchvision model ``name``'s state dict at ``source`` (a file or URL) into a detkit checkpoint.

    The importer (a component of kind ``importer``) gives the config and the key
    renames; the converted weights must fit the model it describes exactly. Returns
    the class names.
    """
    plugins = load_plugins(cli_plugins)
    importer = plugins.registry.get("importer", name).factory()
    state = read_state_dict(str(source))
    config, class_names, converted = importer.convert(state, config_path=config_path)
    model, components = model_and_components(config, plugins, class_names=class_names)
    load_state(model, converted, path=str(source))
    save_checkpoint(
        output,
        model=model,
        config=config,
        class_names=class_names,
        meta={
            "imported_from": f"torchvision {name}",
            "source": str(source),
            "torch_version": torch.__version__,
            "components": components,
        },
    )
    return list(class_names)


def proposals_report(
    results: list[dict[str, Any]], skipped: Mapping[int, str], *, source: Mapping[str, Any], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """What ``detkit proposals`` writes to ``proposals.json``: the data scored, the settings, one entry per proposer.

    Args:
        results: :func:`~detkit.engine.proposals.score_proposers`' results (at least one).
        skipped: image index -> why it was skipped.
        source: where the images came from (``data``, ``images``, ``split``).
        settings: the scoring settings (budgets, sizes, limits).
    """
    if not results:
        raise DetkitError("no proposer results to report")
    first = results[0]
    return {
        "dataset": {
            **source,
            "num_images": first["num_images"],
            "num_images_skipped": len(skipped),
            "skipped": [{"index": i, "reason": why} for i, why in sorted(skipped.items())],
            "num_objects": first["num_objects"],
            "num_objects_by_size": first["num_objects_by_size"],
        },
        "settings": dict(settings),
        "proposers": results,
    }


__all__ = [
    "coco_evaluation",
    "import_torchvision",
    "proposals_report",
    "run_training",
    "seed_and_threads",
    "train_loader",
]
