"""What a checkpoint is, without building its model: ``detkit info CHECKPOINT``.

:func:`checkpoint_info` reads a file :func:`~detkit.engine.checkpoint.load_checkpoint`
accepts (detection or classification, ``best.pt``, ``last.pt`` or an imported
torchvision model) and describes it as a JSON-ready dict; :func:`format_info` prints it:

- the file: size, ``format_version`` (and the newest this detkit reads), whether it can
  resume training (``last.pt`` holds the trainer's state);
- the architecture: the task, ``model.type``, each configured component (backbone,
  neck, proposer, heads: name and settings) with the plugin that provided it, the input
  preprocessing, and the parameter count;
- the classes;
- the training: where it came from (``detkit train``'s data, iteration, epoch, precision;
  or the torchvision model it was imported from), the main settings;
- the metrics at save time, and the detkit and torch versions that wrote it.

Nothing is built and no plugin is loaded, so a checkpoint whose plugin is missing is
still described (the missing plugin is named).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from detkit.engine.checkpoint import FORMAT_VERSION, load_checkpoint

__all__ = ["checkpoint_info", "format_info"]

#: Component keys of ``model`` described as the architecture, in pipeline order.
_COMPONENTS = ("backbone", "neck", "proposer", "region_extractor", "roi_head", "mask_head", "dense_head", "postprocess")
#: Train settings worth showing.
_TRAIN_KEYS = ("max_iters", "max_minutes", "epochs", "batch_size", "lr", "optimizer", "device", "precision", "ema")
#: Keys naming where a data section's images are.
_DATA_KEYS = ("ann_file", "root", "images", "data_yaml", "split", "num_train", "num_val")
#: Model types without a region proposer and RoI heads.
_SINGLE_STAGE = ("single_shot", "dense")


def checkpoint_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe the checkpoint at ``path`` (see the module docstring).

    Raises:
        CheckpointError: not a detkit checkpoint, or one this detkit cannot read (the
            message says why and what to do).
    """
    file = Path(path)
    ckpt = load_checkpoint(file)
    config: Mapping[str, Any] = ckpt["config"]
    meta: Mapping[str, Any] = ckpt["meta"]
    model_cfg: Mapping[str, Any] = config.get("model") or {}
    task = str(meta.get("task", "detect"))
    tensors = [v for v in ckpt["model"].values() if isinstance(v, torch.Tensor)]
    return {
        "file": str(file),
        "size_bytes": file.stat().st_size,
        "format_version": ckpt["format_version"],
        "reads_up_to": FORMAT_VERSION,
        "resumable": "train_state" in ckpt,
        "task": task,
        "architecture": _architecture(task, model_cfg, meta),
        "parameters": sum(t.numel() for t in tensors if t.is_floating_point()),
        "classes": list(ckpt["class_names"]),
        "training": _training(config, meta),
        "metrics": dict(meta.get("metrics") or {}),
        "detkit_version": meta.get("detkit_version"),
        "torch_version": meta.get("torch_version"),
        "created": meta.get("created"),
    }


def _architecture(task: str, model: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    plugins = meta.get("components") or {}
    detector = str(model.get("type", "two_stage"))
    skipped = ("proposer", "region_extractor", "roi_head") if detector in _SINGLE_STAGE else ()
    components = {}
    for key in _COMPONENTS:
        section = model.get(key)
        if not isinstance(section, Mapping) or key in skipped:
            continue
        entry = {"name": section.get("name"), "settings": {k: v for k, v in section.items() if k != "name"}}
        plugin = plugins.get(f"model.{key}") or {}
        if plugin.get("plugin"):
            entry["plugin"] = plugin["plugin"]
        components[key] = entry
    described: dict[str, Any] = {"type": detector if task == "detect" else task, "components": components}
    if plugins.get("model.type", {}).get("plugin"):
        described["type_plugin"] = plugins["model.type"]["plugin"]
    preprocess = model.get("preprocess")
    if isinstance(preprocess, Mapping):
        described["preprocess"] = dict(preprocess)
    if task != "detect":  # a classifier: its backbone and pixel statistics are model keys of their own
        described["settings"] = {k: v for k, v in model.items() if not isinstance(v, Mapping)}
    return described


def _training(config: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    training: dict[str, Any] = {}
    if meta.get("imported_from"):
        training["imported_from"] = meta["imported_from"]
        training["source"] = meta.get("source")
    for key in ("iteration", "epoch", "precision", "ema", "world_size"):
        if meta.get(key) is not None:
            training[key] = meta[key]
    data = config.get("data") or {}
    for split in ("train", "val"):
        section = data.get(split)
        if isinstance(section, Mapping):
            training[f"data_{split}"] = {k: section[k] for k in ("name", *_DATA_KEYS) if section.get(k) is not None}
    train = config.get("train") or {}
    settings = {k: train[k] for k in _TRAIN_KEYS if isinstance(train, Mapping) and train.get(k) is not None}
    if settings:
        training["settings"] = settings
    return training


def format_info(info: Mapping[str, Any]) -> str:
    """A readable summary of :func:`checkpoint_info`'s dict."""
    arch = info["architecture"]
    size = info["size_bytes"] / 2**20
    resumable = "; holds the trainer's state (detkit train --resume)" if info["resumable"] else ""
    lines = [
        f"{info['file']}: detkit checkpoint, format version {info['format_version']} "
        f"(this detkit reads up to {info['reads_up_to']}), {size:.1f} MiB{resumable}",
        f"task          {info['task']}",
        f"architecture  {arch['type']}" + (f" (plugin {arch['type_plugin']})" if arch.get("type_plugin") else ""),
    ]
    for key, entry in arch["components"].items():
        settings = ", ".join(f"{k}={_short(v)}" for k, v in entry["settings"].items())
        plugin = f"  [{entry['plugin']}]" if entry.get("plugin") else ""
        lines.append(f"  {key:<16} {entry['name']}" + (f" ({settings})" if settings else "") + plugin)
    if arch.get("preprocess"):
        lines.append("  preprocess       " + ", ".join(f"{k}={_short(v)}" for k, v in arch["preprocess"].items()))
    if arch.get("settings"):
        lines.append("  settings         " + ", ".join(f"{k}={_short(v)}" for k, v in arch["settings"].items()))
    lines.append(f"weights       {info['parameters']:,} values (parameters and buffers)")
    classes = info["classes"]
    shown = ", ".join(classes[:20]) + (f", ... ({len(classes) - 20} more)" if len(classes) > 20 else "")
    lines.append(f"classes       {len(classes)}: {shown}")
    training = info["training"]
    if training.get("imported_from"):
        lines.append(f"imported from {training['imported_from']} ({training.get('source')})")
    steps = [f"{k} {training[k]}" for k in ("iteration", "epoch", "precision", "world_size") if k in training]
    if steps:
        lines.append("trained       " + ", ".join(steps) + (", EMA weights" if training.get("ema") else ""))
    for split in ("train", "val"):
        data = training.get(f"data_{split}")
        if data:
            lines.append(f"data.{split:<8} " + ", ".join(f"{k}={_short(v)}" for k, v in data.items()))
    if training.get("settings"):
        lines.append("train         " + ", ".join(f"{k}={_short(v)}" for k, v in training["settings"].items()))
    lines.append("metrics       " + (_metrics(info["metrics"]) or "none recorded"))
    lines.append(
        f"written by    detkit {info['detkit_version']}, torch {info['torch_version']}"
        + (f", {info['created']}" if info.get("created") else "")
    )
    return "\n".join(lines)


def _metrics(metrics: Mapping[str, Any]) -> str:
    parts = []
    for iou_type in ("bbox", "segm"):
        m = metrics.get(iou_type)
        if isinstance(m, Mapping) and "AP" in m:
            parts.append(f"{iou_type} AP {m['AP']:.3f} (AP50 {m.get('AP50', -1):.3f})")
    if isinstance(metrics.get("accuracy"), (int, float)):
        images = f" on {metrics['num_images']} images" if metrics.get("num_images") else ""
        parts.append(f"accuracy {metrics['accuracy']:.4f}{images}")
    return "; ".join(parts)


def _short(value: Any, width: int = 60) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."
