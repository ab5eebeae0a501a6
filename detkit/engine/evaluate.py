"""Run a detector over a dataset and score it with COCO metrics.

The metrics say what they were computed on: ``metrics["images"]`` is
``{"evaluated": N, "total": M, "skipped": [{"index", "image_id", "file", "reason"}, ...]}``.
COCO AP is averaged over the images that were evaluated, so a run that skipped an
image is not comparable with one that did not. :func:`evaluate_dataset` stops on an
unreadable image unless ``skip_unreadable`` (``detkit eval --skip-unreadable``;
training's periodic evaluation skips, logs and records them).

:func:`evaluate_results` scores a COCO results file that any detector wrote (``detkit
eval --results``) with the same evaluator, no model involved.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkit.data.base import DetectionDataset
from detkit.data.check import probe_image
from detkit.data.loader import build_loader
from detkit.device import autocast
from detkit.engine import distributed
from detkit.errors import DataError
from detkit.evaluation.coco import DEFAULT_BACKEND, CocoEvaluator, read_results, write_results
from detkit.progress import progress as progress_bar

logger = logging.getLogger(__name__)

#: Unreadable files an error message names (the count is always given).
_NAMED = 3


def evaluate_dataset(
    model: nn.Module,
    dataset: DetectionDataset,
    *,
    batch_size: int = 2,
    max_images: int | None = None,
    iou_types: tuple[str, ...] | None = None,
    results_path: str | Path | None = None,
    label_map: torch.Tensor | None = None,
    skip_unreadable: bool = True,
    precision: str = "fp32",
    backend: str = DEFAULT_BACKEND,
    shard: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """COCO metrics of ``model`` on ``dataset`` (see :mod:`detkit.evaluation.coco`), and the images they cover.

    Args:
        model: a detector; it is put in eval mode and run under ``no_grad`` on its own device.
        iou_types: ``("bbox",)`` or ``("bbox", "segm")``; default: ``segm`` too when the
            model predicts masks.
        max_images: evaluate the first ``max_images`` only.
        results_path: also write the COCO results json there.
        label_map: ``(K_model,)`` model label -> dataset label, ``-1`` for classes the
            dataset lacks (their detections are dropped); see :func:`label_map_by_name`.
        skip_unreadable: leave out images that cannot be used (missing, corrupt, not
            the annotated size), with a warning; else stop. Either way
            ``metrics["images"]`` records the images evaluated and skipped.
        precision: ``fp32``, or ``fp16``/``bf16`` to run the model under autocast
            (see :func:`detkit.device.autocast`); recorded as ``metrics["precision"]``.
        backend: the COCOeval implementation (``eval.backend``, see :data:`~detkit.evaluation.coco.BACKENDS`).
        shard: in a distributed run, each rank runs the model on every
            ``world_size``-th image and rank 0 gathers the detections and scores them;
            the other ranks return ``{}``.

    Raises:
        DataError: an image cannot be used and not ``skip_unreadable`` (named, with
            the count; checked from the headers before the model runs, and again for
            files that fail to decode), or no image at all can be used.
    """
    device = next(model.parameters()).device
    if max_images is not None and max_images < len(dataset):
        subset: Any = torch.utils.data.Subset(dataset, range(max_images))
        for attr in ("class_names", "category_ids", "image_ids", "coco_gt", "image_path"):
            setattr(subset, attr, getattr(dataset, attr))
        source = subset
    else:
        source = dataset
    total = len(source)
    info = distributed.current() if shard else distributed.DistInfo()
    if info.distributed:
        indices = range(info.rank, total, info.world_size)
        part: Any = torch.utils.data.Subset(source, indices)
        for attr in ("class_names", "category_ids", "image_ids", "coco_gt", "image_path"):
            setattr(part, attr, getattr(dataset, attr))
        mine = part
    else:
        indices, mine = range(total), source
    if not skip_unreadable:
        _refuse_unreadable(_unreadable_headers(dataset, total), total, what="unreadable")
    if iou_types is None:
        iou_types = ("bbox", "segm") if getattr(model, "has_masks", False) else ("bbox",)
    evaluator = CocoEvaluator(
        dataset.coco_gt(), class_names=dataset.class_names, category_ids=dataset.category_ids,
        iou_types=iou_types, backend=backend,
    )
    loader = build_loader(mine, batch_size=batch_size, shuffle=False)
    found: list[tuple[int, Any]] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in progress_bar(loader, desc="evaluate", unit="batch", enabled=progress and info.main, leave=False):
            if not batch.images:
                continue
            with autocast(device, precision):
                detections, _ = model([im.to(device) for im in batch.images])
            for image_id, dets in zip(batch.image_ids, detections):
                dets = dets.to("cpu")
                if label_map is not None:
                    mapped = label_map[dets.labels]
                    dets = dets[mapped >= 0].replace(labels=mapped[mapped >= 0])
                if info.distributed:  # rank 0 scores every rank's after the gather
                    found.append((image_id, dets))
                else:  # streamed: held once, as result records (masks as RLEs)
                    evaluator.add(image_id, dets)
    model.train(was_training)
    skipped = _skipped(dataset, loader.dataset, indices)
    if info.distributed:
        found = distributed.gather_to_main(found)
        skipped = sorted(distributed.gather_to_main(skipped), key=lambda s: s["index"])
        if not info.main:
            return {}
    for image_id, dets in found:
        evaluator.add(image_id, dets)
    if skipped and not skip_unreadable:
        _refuse_unreadable(skipped, total, what="unusable")
    if len(skipped) == total:
        raise DataError(
            f"none of the {total} images of the evaluation set can be used (first: {skipped[0]['reason']})"
        )
    if skipped:
        logger.warning(
            "evaluation skipped %d of %d images (first: %s); the metrics are over the other %d",
            len(skipped), total, skipped[0]["reason"], total - len(skipped),
        )
    if results_path is not None:
        write_results(results_path, evaluator.results())
    metrics: dict[str, Any] = evaluator.evaluate()
    metrics["precision"] = precision
    metrics["images"] = {"evaluated": total - len(skipped), "total": total, "skipped": skipped}
    return metrics


def evaluate_results(
    results: str | Path, dataset: DetectionDataset, *, backend: str = DEFAULT_BACKEND
) -> dict[str, Any]:
    """COCO metrics of the results file ``results`` against ``dataset``'s ground truth.

    Every image of ``dataset`` counts, one without a record as one where the detector
    found nothing; so a ``results.json`` that :func:`evaluate_dataset` wrote for a whole
    dataset (nothing skipped, no ``max_images``) scores the same numbers again. Boxes
    are evaluated when every record has a ``bbox``, masks when every one has a
    ``segmentation``. ``metrics["results"]`` names the file.

    Raises:
        DataError: the file is not a JSON list of COCO result records, or its records
            name image or category ids that ``dataset`` lacks (the first few, and the count).
    """
    records = read_results(results)
    iou_types = tuple(t for t, key in (("bbox", "bbox"), ("segm", "segmentation")) if all(key in r for r in records))
    evaluator = CocoEvaluator(
        dataset.coco_gt(), class_names=dataset.class_names, category_ids=dataset.category_ids,
        iou_types=iou_types or ("bbox",), backend=backend,
    )
    evaluator.add_results(records, image_ids=dataset.image_ids, source=f"results file '{results}'")
    metrics: dict[str, Any] = evaluator.evaluate()
    total = len(dataset.image_ids)
    metrics["results"] = str(results)
    metrics["images"] = {"evaluated": total, "total": total, "skipped": []}
    return metrics


def _skipped(dataset: DetectionDataset, view: Any, indices: Sequence[int]) -> list[dict[str, Any]]:
    """The items the loader's :class:`~detkit.data.loader.SkipBadItems` skipped, with their files and reasons.

    ``indices[k]`` is the dataset index of the loader's item ``k``.
    """
    reasons: dict[int, str] = getattr(view, "reasons", {})
    return [
        {
            "index": indices[k],
            "image_id": dataset.image_ids[indices[k]],
            "file": str(dataset.image_path(indices[k])),
            "reason": reasons.get(k, "could not be read"),
        }
        for k in sorted(getattr(view, "bad_items", ()))
    ]


def _unreadable_headers(dataset: DetectionDataset, count: int) -> list[dict[str, Any]]:
    """Items ``0..count-1`` whose image is missing or whose header cannot be read (cheap: no decoding)."""
    bad = []
    for i in range(count):
        path = dataset.image_path(i)
        try:
            probe_image(path)
        except DataError as e:
            bad.append({"index": i, "image_id": dataset.image_ids[i], "file": str(path), "reason": str(e)})
    return bad


def _refuse_unreadable(bad: list[dict[str, Any]], total: int, *, what: str) -> None:
    """DataError naming the first files of ``bad`` (missing, else ``what``) and their count; nothing if none."""
    if not bad:
        return
    named = ", ".join(f"'{b['file']}' ({'missing' if not Path(b['file']).is_file() else what})" for b in bad[:_NAMED])
    more = f" and {len(bad) - _NAMED} more" if len(bad) > _NAMED else ""
    if what == "unusable":
        more += f" (first: {bad[0]['reason']})"
    raise DataError(
        f"{len(bad)} of {total} images of the evaluation set cannot be used: {named}{more}; fix or remove them, "
        f"or evaluate the other {total - len(bad)} with --skip-unreadable (AP then covers those only)"
    )


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
