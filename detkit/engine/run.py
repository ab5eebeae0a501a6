"""From a resolved detection config to a finished run, and the other whole jobs the commands start.

:func:`run_training` is ``detkit train`` without the argument parsing: joining a
distributed job (:mod:`detkit.engine.distributed`), seeding, threads and deterministic
algorithms, plugins and their ``detkit_configure`` check, the data check
(``data.check``), datasets and class names, the model (and ``train.init_weights``),
the training loader, the evaluation callback, the checkpoint to resume from and the
:class:`~detkit.engine.trainer.Trainer`. :func:`import_torchvision` is
``detkit import-torchvision``; :func:`proposals_report` assembles what
``detkit proposals`` writes.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detkit.config import augment_settings
from detkit.data.augment import training_transforms
from detkit.data.base import DetectionDataset
from detkit.data.check import check_before_training
from detkit.data.loader import TrainBatchSampler, build_loader
from detkit.engine import distributed
from detkit.engine.build import build_dataset, model_and_components, plugins_for
from detkit.engine.checkpoint import load_state, save_checkpoint
from detkit.engine.evaluate import evaluate_dataset
from detkit.engine.resume import resume_checkpoint
from detkit.engine.trainer import EvaluateFn, Trainer
from detkit.engine.transfer import init_weights
from detkit.errors import ConfigError, DetkitError
from detkit.evaluation.coco import DEFAULT_BACKEND, check_backend
from detkit.memory import reuse_freed_memory
from detkit.plugins import load_plugins
from detkit.weights import read_state_dict

logger = logging.getLogger(__name__)


def seed_and_threads(train: Mapping[str, Any], *, rank: int = 0) -> None:
    """Seed torch, numpy and Python with ``train.seed`` (+ ``rank``), cap torch's CPU threads at
    ``train.threads`` (when a number; the trainer handles ``auto``, see :mod:`detkit.engine.threads`),
    and with ``train.deterministic`` choose deterministic algorithms.

    The data order does not depend on these seeds (see
    :class:`~detkit.data.loader.TrainBatchSampler`); the model's own random choices
    (proposal sampling) do, and each rank of a distributed run draws its own.
    """
    seed = int(train["seed"]) + rank
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if isinstance(train.get("threads"), int):
        torch.set_num_threads(train["threads"])
    if train.get("deterministic"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for repeatable GEMMs
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def train_loader(config: Mapping[str, Any], dataset: DetectionDataset, *, rank: int = 0, world_size: int = 1) -> Any:
    """The training loader of ``config`` for one process: batch size, workers, augmentation, seed.

    ``data.augment`` (:func:`detkit.config.augment_settings`) becomes
    :func:`detkit.data.augment.training_transforms`: mosaic -> affine -> HSV -> flip.
    With ``data.augment.mosaic_off_last: f`` the last fraction ``f`` of the run's configured
    length (``train.max_iters``, else ``train.epochs``; not the horizon ``train.max_minutes``
    re-estimates) trains without mosaic, from the sampler's position where it starts.
    Batches come from a :class:`~detkit.data.loader.TrainBatchSampler`, so a run
    resumes mid-epoch exactly and ``world_size`` processes share each epoch.
    """
    train, data = config["train"], config["data"]
    batch_size = int(train["batch_size"])
    augment = augment_settings(data["augment"])
    settings = {
        "dataset": dataset, "hflip": augment["hflip"], "hsv": augment["hsv"], "affine": augment["affine"],
        "size": augment["size"],
    }
    transforms = training_transforms(**settings, mosaic=augment["mosaic"])
    final_from, final_transforms = None, None
    if augment["mosaic"] > 0 and augment["mosaic_off_last"] > 0:
        accumulate = int(train.get("accumulate") or 1)
        steps = max(((len(dataset) // world_size) // batch_size) // accumulate, 1)  # iterations per epoch
        total = int(train["max_iters"]) if train.get("max_iters") else int(train["epochs"]) * steps
        start = round((1.0 - augment["mosaic_off_last"]) * total)  # the first iteration without mosaic
        final_from = (1 + start // steps, (start % steps) * accumulate)  # (epoch, batch)
        final_transforms = training_transforms(**settings, mosaic=0.0)
    sampler = TrainBatchSampler(
        len(dataset), batch_size=batch_size, seed=int(train["seed"]), rank=rank, world_size=world_size,
        final_from=final_from,
    )
    return build_loader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        workers=int(data["workers"]),
        transforms=transforms,
        seed=int(train["seed"]),
        batch_sampler=sampler,
        final_transforms=final_transforms,
    )


def coco_evaluation(
    config: Mapping[str, Any], dataset: DetectionDataset, results_path: Path, *, progress: bool
) -> EvaluateFn:
    """The trainer's evaluation: COCO metrics of a model on ``dataset`` (``eval.batch_size``, ``eval.max_images``,
    ``eval.backend``).

    Raises:
        ConfigError: an unknown ``eval.backend`` (before training starts).
    """
    settings = config["eval"]
    backend = check_backend(str(settings.get("backend", DEFAULT_BACKEND)))

    def evaluate(model: nn.Module) -> dict[str, Any]:
        return evaluate_dataset(
            model,
            dataset,
            batch_size=int(settings["batch_size"]),
            max_images=settings.get("max_images"),
            results_path=results_path,
            precision=str(config["train"].get("precision", "fp32")),
            backend=backend,
            shard=True,
            progress=progress,
        )

    return evaluate


def resume_source(config: Mapping[str, Any], resume: str | os.PathLike[str] | None) -> Path | None:
    """The ``last.pt`` a run continues from: ``resume`` (a run folder or checkpoint), or with
    ``train.resume=auto`` the output folder's when it has one; None for a new run.

    Raises:
        ConfigError: ``resume`` holds no checkpoint, or ``train.resume`` is not ``auto``/null.
    """
    if resume is not None:
        path = Path(resume)
        found = resume_checkpoint(path) if path.is_dir() else (path if path.is_file() else None)
        if found is None:
            raise ConfigError(f"--resume {str(resume)!r}: no last.pt there to continue from")
        return found
    mode = config["train"].get("resume")
    if mode in (None, False):
        return None
    if mode != "auto":
        raise ConfigError(f"train.resume must be auto or null, got {mode!r}")
    found = resume_checkpoint(config["output"]["dir"])
    if found is None:
        logger.info("train.resume=auto: %s holds no last.pt; starting a new run", config["output"]["dir"])
    return found


def run_training(
    config: dict[str, Any],
    cli_plugins: Sequence[str] = (),
    *,
    progress: bool = True,
    resume: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train and evaluate the detector a resolved config describes; returns the final metrics.

    ``config["model"]`` gets the class names (from the training set unless the config
    names them) and their count; the output folder is ``output.dir``. Under
    ``torchrun`` each process runs this; rank 0 prepares the data and writes the files.
    Freed memory stays in the process for the next step (:func:`detkit.memory.reuse_freed_memory`).

    Args:
        resume: a run folder (or its ``last.pt``) to continue; see :func:`resume_source`.
    """
    train = config["train"]
    info, device = distributed.init_from_env(str(train["device"]))  # a bad device fails before any work
    reuse_freed_memory()  # every step allocates the same feature maps: keep their pages, don't fault them in again
    try:
        return _run_training(config, cli_plugins, info=info, device=device, progress=progress, resume=resume)
    finally:
        distributed.shutdown()


def _run_training(
    config: dict[str, Any],
    cli_plugins: Sequence[str],
    *,
    info: distributed.DistInfo,
    device: torch.device,
    progress: bool,
    resume: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    train = config["train"]
    seed_and_threads(train, rank=info.rank)
    resume_from = resume_source(config, resume)
    plugins = plugins_for(config, cli_plugins)
    plugins.hook.detkit_configure(config=config)
    out_dir = Path(config["output"]["dir"])
    if not info.main:
        distributed.barrier()  # rank 0 generates, checks and reads the data first
    else:
        check_before_training(config, plugins.registry, out_dir=out_dir, progress=progress)  # data.check
    train_set = build_dataset(config, "train", plugins)
    val_set = build_dataset(config, "val", plugins)
    if info.main:
        distributed.barrier()
    class_names = list(config["model"].get("class_names") or train_set.class_names)
    config["model"]["class_names"] = class_names
    config["model"]["num_classes"] = len(class_names)
    model, components = model_and_components(config, plugins, class_names=class_names)
    if train.get("init_weights") and resume_from is None:
        report = init_weights(
            model, str(train["init_weights"]), class_names=class_names, registry=plugins.registry,
            strict=bool(train["init_weights_strict"]),
        )
        if info.main:
            print(report.summary())
    trainer = Trainer(
        model=model,
        train_loader=train_loader(config, train_set, rank=info.rank, world_size=info.world_size),
        evaluate=coco_evaluation(config, val_set, out_dir / "results.json", progress=progress),
        out_dir=out_dir,
        config=config,
        class_names=class_names,
        checkpoint_meta={"components": components, "world_size": info.world_size},
        resume_from=resume_from,
        device=device,
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


#: The version of ``proposals.json``'s layout (README, "proposals.json").
PROPOSALS_FORMAT = "detkit.proposals/1"


def proposals_report(
    results: list[dict[str, Any]],
    skipped: Mapping[int, str],
    *,
    source: Mapping[str, Any],
    settings: Mapping[str, Any],
    total: int,
) -> dict[str, Any]:
    """What ``detkit proposals`` writes to ``proposals.json``: the data scored, the settings, one entry per proposer.

    README's "proposals.json" section documents the schema (``format`` names its version).

    Args:
        results: :func:`~detkit.engine.proposals.score_proposers`' results (at least one).
        skipped: image index -> why it was skipped.
        source: where the images came from (``data``, ``images``, ``split``).
        settings: the scoring settings (budgets, sizes, limits).
        total: how many images the data holds (``--max-images`` may score fewer).
    """
    if not results:
        raise DetkitError("no proposer results to report")
    first = results[0]
    return {
        "format": PROPOSALS_FORMAT,
        "dataset": {
            **source,
            "images_evaluated": first["num_images"],
            "images_total": total,
            "num_images": first["num_images"],
            "num_images_skipped": len(skipped),
            "skipped": [{"index": i, "reason": why} for i, why in sorted(skipped.items())],
            "num_objects": first["num_objects"],
            "num_objects_by_size": first["num_objects_by_size"],
        },
        "settings": dict(settings),
        "proposers": results,
    }


def proposals_coverage(dataset: Mapping[str, Any], *, max_images: int | None) -> str:
    """``scored on N of M images ...``: what a proposals report's numbers cover, and what was left out."""
    evaluated, total = dataset["images_evaluated"], dataset["images_total"]
    skipped = dataset["skipped"]
    parts = [f"scored on {evaluated} of {total} images"]
    if max_images is not None and max_images < total:
        parts.append(f"the first {max_images} (--max-images)")
    if skipped:
        parts.append(f"{len(skipped)} skipped (first: {skipped[0]['reason']}; proposals.json lists them)")
    return ", ".join(parts) + f"; {dataset['num_objects']} objects"


__all__ = [
    "PROPOSALS_FORMAT",
    "coco_evaluation",
    "import_torchvision",
    "proposals_coverage",
    "proposals_report",
    "resume_source",
    "run_training",
    "seed_and_threads",
    "train_loader",
]
