"""Run a detector over a dataset and score it with COCO metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from detkit.data.base import DetectionDataset
from detkit.data.loader import build_loader
from detkit.errors import DataError
from detkit.evaluation.coco import CocoEvaluator, write_results


def evaluate_dataset(
    model: nn.Module,
    dataset: DetectionDataset,
    *,
    batch_size: int = 2,
    max_images: int | None = None,
    iou_types: tuple[str, ...] | None = None,
    results_path: str | Path | None = None,
    label_map: torch.Tensor | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """COCO metrics of ``model`` on ``dataset`` (see :mod:`detkit.evaluation.coco`).

    Args:
        model: a detector; it is put in eval mode and run under ``no_grad`` on its own device.
        iou_types: ``("bbox",)`` or ``("bbox", "segm")``; default: ``segm`` too when the
            model predicts masks.
        max_images: evaluate the first ``max_images`` only.
        results_path: also write the COCO results json there.
        label_map: ``(K_model,)`` model label -> dataset label, ``-1`` for classes the
            dataset lacks (their detections are dropped); see :func:`label_map_by_name`.
    """
    device = next(model.parameters()).device
    if max_images is not None and max_images < len(dataset):
        subset: Any = torch.utils.data.Subset(dataset, range(max_images))
        for attr in ("class_names", "category_ids", "image_ids", "coco_gt", "image_path"):
            setattr(subset, attr, getattr(dataset, attr))
        source = subset
    else:
        source = dataset
    if iou_types is None:
        iou_types = ("bbox", "segm") if getattr(model, "has_masks", False) else ("bbox",)
    evaluator = CocoEvaluator(
        dataset.coco_gt(), class_names=dataset.class_names, category_ids=dataset.category_ids,
        iou_types=iou_types,
    )
    loader = build_loader(source, batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress, leave=False):
            if not batch.images:
                continue
            detections, _ = model([im.to(device) for im in batch.images])
            for image_id, dets in zip(batch.image_ids, detections):
                dets = dets.to("cpu")
                if label_map is not None:
                    mapped = label_map[dets.labels]
                    dets = dets[mapped >= 0].replace(labels=mapped[mapped >= 0])
                evaluator.add(image_id, dets)
    model.train(was_training)
    if results_path is not None:
        write_results(results_path, evaluator.results())
    return evaluator.evaluate()


def label_map_by_name(model_classes: Sequence[str], data_classes: Sequence[str], *, data: str) -> torch.Tensor | None:
    """Model label -> dataset label by class name (``None`` when the lists are equal).

    Lets a model trained on more classes (torchvision's 91 COCO ids) be scored on a
    dataset that names a subset of them.

    Raises:
        DataError: a dataset class the model does not know.
    """
    if list(model_classes) == list(data_classes):
        return None
    index = {name: k for k, name in enumerate(data_classes)}
    missing = sorted(set(data_classes) - set(model_classes))
    if missing:
        raise DataError(
            f"{data!r} has classes the model does not predict: {missing[:8]}; evaluate on data "
            "annotated with the classes the model was trained on"
        )
    return torch.tensor([index.get(name, -1) for name in model_classes], dtype=torch.int64)


def ap_of(metrics: Mapping[str, Any]) -> float:
    """The headline box AP of a metrics dict (or -1 when absent)."""
    return float(metrics.get("bbox", {}).get("AP", -1.0))
