"""Train and evaluate image classifiers (CS231n lectures 5-7) from a YAML config.

A run (:func:`train_classifier`) writes into ``output.dir``::

    config.yaml     the resolved config
    metrics.jsonl   one JSON line per epoch: {"epoch", "lr", "train_loss", "train_acc", "test_acc", "seconds"}
    curves.png      training loss, train and test accuracy per epoch
    best.pt         the epoch with the highest test accuracy (a detkit checkpoint)
    last.pt         the last epoch
    metrics.json    {"accuracy", "per_class": {name: accuracy}, "confusion": [[...]], ...} of best.pt

The data has a training and a test split and nothing else, so ``best.pt`` is
picked on the test split (the JSON lines show every epoch's test accuracy: pick
a recipe whose last epochs are all good, not one lucky epoch).

Config schema (:data:`DEFAULTS`, keys as for detection configs: one ``base:``
level, dotted overrides, unknown keys are errors with a did-you-mean):

* ``model.backbone``: ``{name: NAME, **kwargs}``, a backbone from the registry
  (:func:`detkit.backbones.registry.list_backbones`); ``num_classes`` is set
  from the data, and ``in_channels``/``input_size`` are filled from
  ``data.channels``/``data.image_size`` when the backbone takes them. Dropout is
  the backbone's own argument where it has one (``model.backbone.dropout=0.5``).
* ``model.pixel_mean/pixel_std``: per-channel input normalisation, done inside the
  model (which takes ``[0, 1]`` images); ``null``: measured on the training images.
* ``data``: ``name: digits`` (scikit-learn's 8x8 digits, fixed stratified split)
  or ``name: folder`` (``root``: ``ROOT/CLASS/*.png``; ``test_root`` or a
  stratified ``test_size`` split of ``root``); ``image_size``, ``channels``;
  ``augment``: any of :data:`AUGMENTATIONS`, applied in that order.
* ``train``: ``optimizer`` (a name of :data:`detkit.lectures.optim.OPTIMIZERS`), ``lr``,
  ``momentum``, ``weight_decay`` (the L2 penalty, in the optimiser), ``schedule``
  (``none``, ``step``/``exponential`` per epoch, ``cosine`` per iteration to
  ``min_lr``), ``epochs``, ``batch_size``, ``max_minutes`` (stop after the epoch
  that crosses it).

Shape glossary: N images, C channels, S image side, K classes, B batch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.classify.data import (
    DIGITS_TEST_SIZE,
    ImageFolderDataset,
    TensorImageDataset,
    digits_split,
    stratified_split,
)
from detkit.config import Schema, load_config, merge, save_config
from detkit.errors import CheckpointError, ConfigError, did_you_mean
from detkit.io import atomic_path, write_json
from detkit.plugins import Plugins
from detkit.progress import ProgressBar
from detkit.progress import progress as show_progress

__all__ = [
    "AUGMENTATIONS",
    "COMPONENT_KEYS",
    "DEFAULTS",
    "SCHEDULES",
    "SCHEMA",
    "ImageClassifier",
    "LoadedClassifier",
    "TrainSummary",
    "build_augment",
    "build_classifier",
    "build_datasets",
    "check_config",
    "evaluate_classifier",
    "format_classification_metrics",
    "is_classifier_checkpoint",
    "load_classifier",
    "load_classify_config",
    "plot_curves",
    "save_classifier",
    "train_classifier",
]

#: ``meta["task"]`` of a classifier checkpoint (detector checkpoints have none).
TASK = "classify"

#: Augmentations ``data.augment`` may list, in the order they are applied.
AUGMENTATIONS: tuple[str, ...] = ("crop", "hflip", "color_jitter", "pca_lighting")

#: Learning-rate schedules ``train.schedule`` may name.
SCHEDULES: tuple[str, ...] = ("none", "step", "exponential", "cosine")

#: Sections whose keys are a registered factory's keyword arguments (checked when built).
COMPONENT_KEYS: frozenset[str] = frozenset({"model.backbone"})

#: Every key of a classification config with its default; ``None`` means unset.
DEFAULTS: dict[str, Any] = {
    "plugins": [],
    "model": {
        "backbone": {"name": "lenet5"},
        "pixel_mean": None,
        "pixel_std": None,
    },
    "data": {
        "name": "digits",
        "root": None,
        "test_root": None,
        "test_size": DIGITS_TEST_SIZE,
        "image_size": 32,
        "channels": 1,
        "augment": [],
        "crop_scale": [0.8, 1.0],
        "crop_ratio": [0.9, 1.1111],
        "hflip": 0.5,
        "color_jitter": 0.4,
        "pca_lighting_std": 0.1,
    },
    "train": {
        "device": "auto",
        "seed": 0,
        "threads": None,
        "epochs": 10,
        "batch_size": 64,
        "optimizer": "adam",
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "schedule": "cosine",
        "step_size": 5,
        "gamma": 0.1,
        "min_lr": 0.0,
        "max_minutes": None,
    },
    "eval": {"batch_size": 512},
    "output": {"dir": "runs/classify"},
}


#: The schema of classification configs, for detkit.config's loader (image folders resolve
#: against the config file's folder, as detection data paths do).
SCHEMA = Schema(
    DEFAULTS, COMPONENT_KEYS, paths=frozenset({"data.root", "data.test_root"}), outputs=frozenset({"output.dir"})
)


# ----------------------------------------------------------------------------- config


def load_classify_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a classification config (and its ``base:``), fill :data:`DEFAULTS`, apply overrides.

    Args:
        path: a YAML file, or ``None`` for the defaults alone.
        overrides: ``key.path=value`` strings, applied last.

    Raises:
        ConfigError: unreadable file, unknown key (with the nearest known one), or
            a value :func:`check_config` rejects.
    """
    config = load_config(path, overrides, schema=SCHEMA)
    check_config(config)
    return config


def check_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for values the trainer cannot use (names, ranges)."""
    from detkit.lectures.optim import OPTIMIZERS

    data, train = config["data"], config["train"]
    if data["name"] not in ("digits", "folder"):
        raise ConfigError(f"data.name must be 'digits' or 'folder', got {data['name']!r}")
    if data["name"] == "folder" and not data["root"]:
        raise ConfigError("data.name is 'folder' but data.root is not set; give data.root=PATH/TO/ROOT")
    if data["channels"] not in (1, 3):
        raise ConfigError(f"data.channels must be 1 or 3, got {data['channels']!r}")
    if data["name"] == "digits" and data["channels"] != 1:
        raise ConfigError("the digits are gray: data.channels must be 1")
    augment = data["augment"] or []
    if not isinstance(augment, list):
        raise ConfigError(f"data.augment must be a list of names ({', '.join(AUGMENTATIONS)}), got {augment!r}")
    for name in augment:
        if name not in AUGMENTATIONS:
            raise ConfigError(
                f"data.augment: unknown augmentation {name!r}{did_you_mean(str(name), AUGMENTATIONS)}; "
                f"known: {', '.join(AUGMENTATIONS)}"
            )
        if name in ("color_jitter", "pca_lighting") and data["channels"] != 3:
            raise ConfigError(f"data.augment: {name!r} needs colour images (data.channels=3)")
    if str(train["optimizer"]).lower() not in OPTIMIZERS:
        raise ConfigError(
            f"train.optimizer: unknown optimizer {train['optimizer']!r}"
            f"{did_you_mean(str(train['optimizer']), OPTIMIZERS)}; known: {', '.join(OPTIMIZERS)}"
        )
    if train["schedule"] not in SCHEDULES:
        raise ConfigError(
            f"train.schedule: unknown schedule {train['schedule']!r}{did_you_mean(str(train['schedule']), SCHEDULES)}"
            f"; known: {', '.join(SCHEDULES)}"
        )
    for key in ("epochs", "batch_size", "image_size"):
        section = data if key == "image_size" else train
        if not isinstance(section[key], int) or section[key] < 1:
            raise ConfigError(f"{'data' if key == 'image_size' else 'train'}.{key} must be a positive integer, "
                              f"got {section[key]!r}")


# ----------------------------------------------------------------------------- data and model


def build_datasets(config: Mapping[str, Any]) -> tuple[TensorImageDataset, TensorImageDataset]:
    """The ``(train, test)`` datasets of a resolved config's ``data`` section."""
    data = config["data"]
    size = int(data["image_size"])
    if data["name"] == "digits":
        return digits_split(image_size=size)
    channels = int(data["channels"])
    everything = ImageFolderDataset(data["root"], size=size, channels=channels)
    if data["test_root"]:
        test = ImageFolderDataset(data["test_root"], size=size, channels=channels, class_names=everything.class_names)
        return everything, test
    return stratified_split(everything, test_size=float(data["test_size"]), seed=int(config["train"]["seed"]))


class ImageClassifier(nn.Module):
    """A backbone's classifier on ``[0, 1]`` images: ``(N, C, S, S) -> (N, K)`` logits.

    Normalises with ``pixel_mean``/``pixel_std`` inside, so that callers (and the
    explanation methods, which perturb pixels) work in image space.

    Args:
        backbone: a module with ``classify(x) -> logits`` (any registered backbone
            built with ``num_classes``).
        pixel_mean, pixel_std: per-channel statistics, ``C`` values each.
    """

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(self, backbone: nn.Module, *, pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        # Not in the state dict: the config holds them, and the state dict stays the backbone's.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    def forward(self, images: Tensor) -> Tensor:
        """``(N, C, S, S)`` in ``[0, 1]`` -> ``(N, K)`` logits."""
        classify: Callable[[Tensor], Tensor] = self.backbone.classify  # type: ignore[assignment]
        return classify((images - self.pixel_mean) / self.pixel_std)


def _fill_backbone_args(config: dict[str, Any], plugins: Plugins) -> None:
    """Fill ``in_channels``/``input_size`` of ``model.backbone`` from ``data`` when the factory takes them."""
    spec = config["model"]["backbone"]
    params = plugins.registry.get("backbone", str(spec["name"])).parameters()
    for key, value in (("in_channels", config["data"]["channels"]), ("input_size", config["data"]["image_size"])):
        if key in params and key not in spec:
            spec[key] = int(value)


def _pixel_stats(config: dict[str, Any], train: TensorImageDataset) -> None:
    """Fill ``model.pixel_mean``/``pixel_std`` from the training images where unset."""
    model = config["model"]
    channels = train.images.shape[1]
    if model["pixel_mean"] is None:
        model["pixel_mean"] = [round(float(v), 6) for v in train.images.mean(dim=(0, 2, 3))]
    if model["pixel_std"] is None:
        model["pixel_std"] = [round(max(float(v), 1e-3), 6) for v in train.images.std(dim=(0, 2, 3))]
    for key in ("pixel_mean", "pixel_std"):
        if len(model[key]) != channels:
            raise ConfigError(f"model.{key} has {len(model[key])} values but the images have {channels} channels")


def build_classifier(config: Mapping[str, Any], plugins: Plugins, *, num_classes: int) -> ImageClassifier:
    """The :class:`ImageClassifier` a resolved config describes (``model.pixel_*`` must be set)."""
    model = config["model"]
    backbone = plugins.registry.build("backbone", model["backbone"], key="model.backbone", num_classes=num_classes)
    if not callable(getattr(backbone, "classify", None)):
        raise ConfigError(f"model.backbone {model['backbone']['name']!r} has no classify(); pick a classifier backbone")
    return ImageClassifier(backbone, pixel_mean=model["pixel_mean"], pixel_std=model["pixel_std"])


def build_augment(config: Mapping[str, Any], train: TensorImageDataset) -> Callable[[Tensor], Tensor] | None:
    """The training-time transform ``(C, S, S) -> (C, S, S)`` of ``data.augment``, or ``None``."""
    from detkit.lectures import augment as aug

    data = config["data"]
    names = [n for n in AUGMENTATIONS if n in (data["augment"] or [])]
    if not names:
        return None
    size = (int(train.images.shape[-2]), int(train.images.shape[-1]))
    scale = (float(data["crop_scale"][0]), float(data["crop_scale"][1]))
    ratio = (float(data["crop_ratio"][0]), float(data["crop_ratio"][1]))
    p_flip = float(data["hflip"])
    jitter = float(data["color_jitter"])
    lighting_std = float(data["pca_lighting_std"])
    eig = aug.rgb_pca(train.images) if "pca_lighting" in names else None

    def transform(image: Tensor) -> Tensor:
        if "crop" in names:
            image = aug.random_resized_crop(image, size, scale, ratio)
        if "hflip" in names:
            image = aug.random_horizontal_flip(image, p_flip)
        if "color_jitter" in names:
            image = aug.color_jitter(image, jitter, jitter, jitter)
        if eig is not None:
            image = aug.pca_lighting(image, eig[0], eig[1], lighting_std).clamp(0.0, 1.0)
        return image

    return transform


def _build_schedule(
    config: Mapping[str, Any], optimizer: torch.optim.Optimizer, iters_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LRScheduler | None, bool]:
    """The scheduler and whether it steps per iteration (cosine) rather than per epoch."""
    from detkit.lectures import schedules

    train = config["train"]
    name = train["schedule"]
    if name == "step":
        return schedules.step_decay_scheduler(optimizer, int(train["step_size"]), float(train["gamma"])), False
    if name == "exponential":
        return schedules.exponential_decay_scheduler(optimizer, float(train["gamma"])), False
    if name == "cosine":
        total = max(1, int(train["epochs"]) * iters_per_epoch)
        return schedules.cosine_decay_scheduler(optimizer, total, float(train["min_lr"])), True
    return None, False


def _build_optimizer(config: Mapping[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    from detkit.lectures.optim import build_optimizer

    train = config["train"]
    name = str(train["optimizer"]).lower()
    kwargs: dict[str, Any] = {"lr": float(train["lr"]), "weight_decay": float(train["weight_decay"])}
    if name in ("momentum", "nesterov"):
        kwargs["momentum"] = float(train["momentum"])
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return build_optimizer(name, params, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"train: cannot build optimizer {name!r}: {exc}") from exc


# ----------------------------------------------------------------------------- evaluation


def evaluate_classifier(
    model: nn.Module, dataset: TensorImageDataset, *, batch_size: int = 512, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Accuracy, per-class accuracy (recall) and the confusion matrix of ``model`` on ``dataset``.

    Returns:
        ``{"accuracy": float, "per_class": {name: float | None}, "confusion":
        [[int]] (rows: true class, columns: predicted), "num_images": int}``;
        a class without test images has per-class accuracy ``None``.
    """
    k = len(dataset.class_names)
    confusion = torch.zeros((k, k), dtype=torch.int64)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            images = dataset.images[start : start + batch_size].to(device)
            labels = dataset.labels[start : start + batch_size]
            predicted = model(images).argmax(1).cpu()
            confusion += torch.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
    model.train(was_training)
    totals = confusion.sum(1)
    correct = confusion.diagonal()
    return {
        "accuracy": float(correct.sum()) / max(int(totals.sum()), 1),
        "per_class": {
            name: (float(c) / int(t) if int(t) else None) for name, c, t in zip(dataset.class_names, correct, totals)
        },
        "confusion": confusion.tolist(),
        "num_images": len(dataset),
    }


def format_classification_metrics(metrics: Mapping[str, Any]) -> str:
    """A readable table: overall accuracy, then accuracy and image count per class."""
    totals = [sum(row) for row in metrics["confusion"]]
    width = max([5, *(len(n) for n in metrics["per_class"])])
    lines = [
        f"accuracy {metrics['accuracy']:.4f} on {metrics['num_images']} images",
        f"{'class':<{width}}  accuracy  images",
    ]
    for (name, acc), total in zip(metrics["per_class"].items(), totals):
        shown = f"{acc:8.4f}" if acc is not None else "       -"
        lines.append(f"{name:<{width}}  {shown}  {total:6d}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- training


def plot_curves(records: Sequence[Mapping[str, Any]], out_png: str | os.PathLike[str], *, title: str = "") -> Path:
    """Draw training loss (top) and train/test accuracy (bottom) per epoch into a PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in records]
    fig = Figure(figsize=(8, 6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(2, 1, sharex=True)
    ax_loss.plot(epochs, [r["train_loss"] for r in records], marker="o", color="black", label="train loss")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_title(title or "training")
    ax_loss.grid(True, alpha=0.3)
    ax_loss.legend(fontsize="small")
    ax_acc.plot(epochs, [r["train_acc"] for r in records], marker="o", label="train accuracy (during the epoch)")
    ax_acc.plot(epochs, [r["test_acc"] for r in records], marker="o", label="test accuracy")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.grid(True, alpha=0.3)
    ax_acc.legend(fontsize="small", loc="lower right")
    target = Path(out_png)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    return target


@dataclass(frozen=True)
class TrainSummary:
    """What :func:`train_classifier` ended with: best.pt's metrics, its epoch, the per-epoch records."""

    metrics: dict[str, Any]
    best_epoch: int
    records: list[dict[str, Any]]
    seconds: float
    out_dir: Path


def save_classifier(
    path: str | os.PathLike[str],
    model: ImageClassifier,
    config: Mapping[str, Any],
    class_names: Sequence[str],
    *,
    epoch: int | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write a classifier checkpoint (the backbone's state dict; ``meta["task"] = "classify"``).

    ``config`` must be resolved (``model.pixel_*`` set) so that :func:`load_classifier` rebuilds the model.
    """
    from detkit.engine.checkpoint import save_checkpoint

    return save_checkpoint(
        path, model=model.backbone, config=config, class_names=class_names,
        meta={"task": TASK, "epoch": epoch, "metrics": dict(metrics or {})},
    )


def _train_epoch(
    model: ImageClassifier,
    train: TensorImageDataset,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    per_iter: bool,
    *,
    batch_size: int,
    augment: Callable[[Tensor], Tensor] | None,
    generator: torch.Generator,
    device: torch.device,
    progress: ProgressBar,
) -> tuple[float, float]:
    """One pass over the shuffled training set; returns mean loss and accuracy."""
    model.train()
    order = torch.randperm(len(train), generator=generator)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        images = train.images[index]
        if augment is not None:
            images = torch.stack([augment(im) for im in images])
        images, labels = images.to(device), train.labels[index].to(device)
        output = model(images)
        if hasattr(output, "loss"):  # GoogLeNet in training: main and auxiliary heads
            loss, logits = output.loss(labels), output.logits
        else:
            loss, logits = F.cross_entropy(output, labels), output
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None and per_iter:
            scheduler.step()
        loss_sum += float(loss.detach()) * len(index)
        correct += int((logits.detach().argmax(1) == labels).sum())
        progress.update(1)
        progress.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    return loss_sum / len(train), correct / len(train)


def train_classifier(
    config: dict[str, Any], *, cli_plugins: Sequence[str] = (), progress: bool = True
) -> TrainSummary:
    """Train the classifier a resolved config describes; see the module docstring for the outputs.

    ``config`` is completed in place (backbone input arguments, pixel statistics)
    and saved as ``config.yaml`` beside the outputs. Each epoch's record is
    printed as a JSON line and appended to ``metrics.jsonl``.

    Raises:
        ConfigError, DataError: a bad config or data set.
    """
    from detkit.device import resolve_device
    from detkit.engine.build import plugins_for

    train_cfg = config["train"]
    seed = int(train_cfg["seed"])
    torch.manual_seed(seed)
    if train_cfg.get("threads"):
        torch.set_num_threads(int(train_cfg["threads"]))
    device = resolve_device(str(train_cfg["device"]))
    plugins = plugins_for(config, cli_plugins)
    train, test = build_datasets(config)
    class_names = train.class_names
    _fill_backbone_args(config, plugins)
    _pixel_stats(config, train)
    model = build_classifier(config, plugins, num_classes=len(class_names)).to(device)
    augment = build_augment(config, train)
    batch_size = int(train_cfg["batch_size"])
    iters_per_epoch = math.ceil(len(train) / batch_size)
    optimizer = _build_optimizer(config, model)
    scheduler, per_iter = _build_schedule(config, optimizer, iters_per_epoch)

    out = Path(config["output"]["dir"])
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    jsonl = out / "metrics.jsonl"
    jsonl.write_text("", encoding="utf-8")
    generator = torch.Generator().manual_seed(seed)
    epochs = int(train_cfg["epochs"])
    budget = float(train_cfg["max_minutes"]) * 60 if train_cfg.get("max_minutes") else math.inf
    start = time.monotonic()
    records: list[dict[str, Any]] = []
    best_acc, best_epoch = -1.0, 0
    best_metrics: dict[str, Any] = {}
    with show_progress(total=epochs * iters_per_epoch, desc="train", unit="it", enabled=progress, leave=False) as bar:
        for epoch in range(1, epochs + 1):
            lr = float(optimizer.param_groups[0]["lr"])
            loss, acc = _train_epoch(
                model, train, optimizer, scheduler, per_iter, batch_size=batch_size, augment=augment,
                generator=generator, device=device, progress=bar,
            )
            if scheduler is not None and not per_iter:
                scheduler.step()
            test_metrics = evaluate_classifier(model, test, batch_size=int(config["eval"]["batch_size"]), device=device)
            record = {
                "epoch": epoch, "lr": lr, "train_loss": round(loss, 6), "train_acc": round(acc, 6),
                "test_acc": round(test_metrics["accuracy"], 6), "seconds": round(time.monotonic() - start, 2),
            }
            records.append(record)
            line = json.dumps(record)
            bar.write(line)  # stdout, above the progress bar
            with jsonl.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
            save_classifier(out / "last.pt", model, config, class_names, epoch=epoch, metrics=test_metrics)
            if test_metrics["accuracy"] >= best_acc:  # ties: the later, longer-trained epoch
                best_acc, best_epoch = test_metrics["accuracy"], epoch
                save_classifier(out / "best.pt", model, config, class_names, epoch=epoch, metrics=test_metrics)
                best_metrics = test_metrics
            if time.monotonic() - start > budget and epoch < epochs:
                print(f"stopping after epoch {epoch}: train.max_minutes={train_cfg['max_minutes']} reached")
                break
    seconds = time.monotonic() - start
    write_json(out / "metrics.json", {**best_metrics, "epoch": best_epoch})
    plot_curves(records, out / "curves.png", title=f"{config['model']['backbone']['name']} on {config['data']['name']}")
    return TrainSummary(metrics=best_metrics, best_epoch=best_epoch, records=records, seconds=seconds, out_dir=out)


# ----------------------------------------------------------------------------- loading


@dataclass
class LoadedClassifier:
    """A classifier rebuilt from a checkpoint, with its resolved config and class names."""

    model: ImageClassifier
    config: dict[str, Any]
    class_names: list[str]


def is_classifier_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a loaded detkit checkpoint was written by :func:`train_classifier`."""
    meta = checkpoint.get("meta")
    return isinstance(meta, Mapping) and meta.get("task") == TASK


def load_classifier(
    weights: str | os.PathLike[str], *, cli_plugins: Sequence[str] = (), checkpoint: Mapping[str, Any] | None = None
) -> LoadedClassifier:
    """Rebuild a classifier (eval mode, CPU) from a checkpoint of :func:`train_classifier`.

    Args:
        checkpoint: the already loaded checkpoint of ``weights``, if at hand.

    Raises:
        CheckpointError: not a detkit checkpoint, a detector's checkpoint, or one
            that does not fit its own config.
    """
    from detkit.engine.build import plugins_for
    from detkit.engine.checkpoint import load_checkpoint, load_state

    ckpt = dict(checkpoint) if checkpoint is not None else load_checkpoint(weights)
    if not is_classifier_checkpoint(ckpt):
        raise CheckpointError(
            f"checkpoint {str(weights)!r} is not a classifier from `detkit classify train` "
            "(a detector's? use `detkit eval` for those)"
        )
    config = merge(DEFAULTS, ckpt["config"], schema=SCHEMA)
    class_names = [str(n) for n in ckpt["class_names"]]
    plugins = plugins_for(config, cli_plugins)
    model = build_classifier(config, plugins, num_classes=len(class_names))
    load_state(model.backbone, ckpt["model"], path=weights)
    return LoadedClassifier(model.eval(), config, class_names)
