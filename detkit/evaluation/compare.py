"""Several runs side by side: COCO metrics, per-class AP and error breakdowns in one table.

A *run* is a folder that ``detkit train --out DIR`` or ``detkit eval --out DIR`` wrote
(see :mod:`detkit.engine.trainer`): its ``metrics.json`` holds the last evaluation's
metrics (:mod:`detkit.evaluation.coco`), per IoU type::

    {"bbox": {"AP": .., ..., "ARl": .., "per_class": {name: AP}, "backend": "faster",
              "errors": {"delta_ap": {"classification": .., ...}, ...}},   # optional
     "segm": {...}, "images": {"evaluated": N, "total": M, "skipped": [...]}, "precision": "fp32"}

A training run also has ``metrics.jsonl`` (the training curve) and ``config.yaml``
(whose ``data.val`` says what it was evaluated on). A run stopped before writing
``metrics.json`` is read from the last evaluation record of its ``metrics.jsonl``.

:func:`compare_table` lays one IoU type out with one column per run:

* the twelve COCO numbers (fractions in ``[0, 1]`` with three decimals, as
  :func:`~detkit.evaluation.coco.format_metrics` prints them; ``-`` where there is
  nothing to measure or a run lacks the number);
* per-class AP over the union of the runs' class names, in order of first appearance;
* when any run has them, the dAP of each error type of TIDE (Bolya et al., "TIDE: A
  General Toolbox for Identifying Object Detection Errors", ECCV 2020): the AP gained by
  fixing every error of that type, so lower is better.

The best value of each row is marked ``*`` (the highest AP or AR, the lowest dAP;
values equal at the printed precision tie; no mark when all are equal). Runs
evaluated on different numbers of images are flagged: their numbers do not compare.
:func:`compare_dict` holds the same rows for ``compare.json``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detkit.errors import DataError
from detkit.evaluation.coco import METRIC_NAMES
from detkit.evaluation.tide import ERROR_TYPES as TIDE_ERROR_TYPES
from detkit.viz.plots import read_metrics

__all__ = [
    "ERROR_TYPES",
    "IOU_TYPES",
    "RunSummary",
    "compare_dict",
    "compare_table",
    "format_runs",
    "iou_types_of",
    "read_run",
    "read_runs",
]

#: IoU types a ``metrics.json`` may hold, in the order they are shown.
IOU_TYPES: tuple[str, ...] = ("bbox", "segm")
#: TIDE's error types in its order; other ``errors["delta_ap"]`` keys follow, sorted.
ERROR_TYPES: tuple[str, ...] = TIDE_ERROR_TYPES
#: The summary dAPs of ``errors`` beside ``delta_ap``: all false positives, all false negatives fixed.
_ERROR_SUMMARIES: tuple[tuple[str, str], ...] = (
    ("false_positive_ap", "false positives"),
    ("false_negative_ap", "false negatives"),
)
_KIND = {"bbox": "boxes", "segm": "masks"}
_BACKEND_NAMES = {"faster": "faster-coco-eval", "pycocotools": "pycocotools"}
#: Decimals of every value, as format_metrics prints them; the best is decided at this precision.
_DECIMALS = 3
_BEST = "*"


def _how_to_evaluate(folder: Path) -> str:
    return f"`detkit eval --weights CHECKPOINT --out {folder}` writes it (CHECKPOINT: e.g. a training run's best.pt)"


@dataclass
class RunSummary:
    """What one run folder says about its model.

    Attributes:
        name: the folder's name, extended by its parents when two runs share it
            (``a/eval``, ``b/eval``); the table's column title.
        path: the run folder.
        metrics: its ``metrics.json`` (or the last evaluation record of ``metrics.jsonl``).
        records: the records of ``metrics.jsonl`` (see :func:`detkit.viz.plots.read_metrics`),
            ``None`` when the folder has none (``detkit eval`` writes none).
        evaluated_on: what the metrics were computed on, as far as the run recorded it:
            ``images`` (``{"evaluated", "total", "skipped"}``, skipped as a count),
            ``data`` (``data.val`` of its ``config.yaml``), ``results`` (the results file
            ``detkit eval --results`` scored), ``precision``, ``backend`` and ``iteration``
            (of the evaluation, in a training run).
    """

    name: str
    path: Path
    metrics: dict[str, Any]
    records: list[dict[str, Any]] | None = None
    evaluated_on: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Row:
    """One line of the table: a label and one value per run (``None``: nothing to show)."""

    key: str
    label: str
    values: list[float | None]
    higher_is_better: bool = True

    def best(self) -> list[int]:
        """Indices of the runs with the best value at the printed precision; none when all agree."""
        shown = [None if v is None else round(v, _DECIMALS) for v in self.values]
        present = [v for v in shown if v is not None]
        if len(present) < 2 or len(set(present)) == 1:
            return []
        top = max(present) if self.higher_is_better else min(present)
        return [i for i, v in enumerate(shown) if v == top]


def _number(value: Any) -> float | None:
    """A finite, non-negative number, else ``None`` (COCO's -1 means "nothing to measure")."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


def _finite(value: Any) -> float | None:
    """A finite number, else ``None`` (dAPs may be negative: TIDE does not clip the false positive/negative fixes)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read '{path}': {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"'{path}' is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            f"evaluate again to rewrite it: {_how_to_evaluate(path.parent)}"
        ) from exc


def _last_eval_metrics(records: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], float | None] | None:
    """The metrics and iteration of the last evaluation record, if any."""
    found = None
    for rec in records:
        if rec.get("type") == "eval" and isinstance(rec.get("metrics"), dict):
            found = (rec["metrics"], _number(rec.get("iter")))
    return found


def _describe_data(config_path: Path) -> str | None:
    """``data.val`` of a run's ``config.yaml`` in a few words; ``None`` when it cannot be read."""
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # extra information only: a damaged config.yaml does not stop a comparison
    data = config.get("data") if isinstance(config, dict) else None
    val = data.get("val") if isinstance(data, dict) else None
    if not isinstance(val, dict):
        return None
    parts = [str(val.get("name", "?"))]
    for key in ("ann_file", "yaml", "root", "images", "split"):
        if val.get(key) not in (None, ""):
            parts.append(f"{key}={val[key]}")
    return " ".join(parts)


def read_run(path: str | os.PathLike[str], *, name: str | None = None) -> RunSummary:
    """Read one run folder (or its ``metrics.json`` named directly).

    Raises:
        DataError: the folder does not exist, has no metrics (no ``metrics.json`` and no
            evaluation in ``metrics.jsonl``), or a file is not valid JSON; the message
            names the path and says what to do.
    """
    path = Path(path)
    if path.is_file() and path.name == "metrics.json":
        path = path.parent
    if not path.exists():
        raise DataError(f"run folder '{path}' does not exist; give folders that `detkit train` or `detkit eval` wrote")
    if not path.is_dir():
        raise DataError(f"'{path}' is not a run folder; give the folder that holds metrics.json")
    jsonl = path / "metrics.jsonl"
    records = read_metrics(jsonl) if jsonl.is_file() else None
    metrics_path = path / "metrics.json"
    last = _last_eval_metrics(records or [])
    iteration = last[1] if last is not None else None
    if metrics_path.is_file():
        metrics = _load_json(metrics_path)
        source = metrics_path
    else:
        if last is None:
            stopped = " (a training run writes it at its first evaluation)" if records is not None else ""
            raise DataError(f"'{path}' has no metrics.json{stopped}; {_how_to_evaluate(path)}")
        metrics, source = last[0], jsonl
    if not isinstance(metrics, dict) or not any(isinstance(metrics.get(t), dict) for t in IOU_TYPES):
        raise DataError(
            f"'{source}' holds no 'bbox' or 'segm' metrics; is it a detkit metrics file? {_how_to_evaluate(path)}"
        )
    return RunSummary(
        name=name or Path(os.path.abspath(path)).name,
        path=path,
        metrics=metrics,
        records=records,
        evaluated_on=_evaluated_on(metrics, path, iteration),
    )


def _evaluated_on(metrics: dict[str, Any], path: Path, iteration: float | None) -> dict[str, Any]:
    source: dict[str, Any] = {}
    images = metrics.get("images")
    if isinstance(images, dict) and "evaluated" in images:
        skipped = images.get("skipped") or []
        source["images"] = {
            "evaluated": images["evaluated"],
            "total": images.get("total"),
            "skipped": len(skipped) if isinstance(skipped, list) else skipped,
        }
    data = _describe_data(path / "config.yaml")
    if data is not None:
        source["data"] = data
    for key in ("results", "precision"):
        if metrics.get(key) is not None:
            source[key] = metrics[key]
    backends = {m["backend"] for t in IOU_TYPES if isinstance(m := metrics.get(t), dict) and "backend" in m}
    if backends:
        source["backend"] = ", ".join(sorted(_BACKEND_NAMES.get(str(b), str(b)) for b in backends))
    if iteration is not None:
        source["iteration"] = int(iteration)
    return source


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """Folder names, extended by parent folders until they differ; ``#2``, ``#3`` for one folder given twice."""
    resolved = [p.resolve() for p in paths]  # one folder however it is spelled
    given = {r: Path(os.path.abspath(p)) for r, p in zip(resolved, paths)}  # named as given (links not followed)
    distinct = list(given)
    parts = {p: given[p].parts for p in distinct}
    names = {p: given[p].name or str(given[p]) for p in distinct}
    depth = 1
    while len(set(names.values())) < len(names) and depth < max(len(x) for x in parts.values()):
        depth += 1
        clashing = {n for n in names.values() if list(names.values()).count(n) > 1}
        names = {p: "/".join(parts[p][-depth:]) if n in clashing else n for p, n in names.items()}
    seen: dict[Path, int] = {}
    unique = []
    for p in resolved:
        seen[p] = seen.get(p, 0) + 1
        unique.append(names[p] if seen[p] == 1 else f"{names[p]}#{seen[p]}")
    return unique


def read_runs(paths: Sequence[str | os.PathLike[str]]) -> list[RunSummary]:
    """Read run folders in order, with unique names (see :class:`RunSummary`)."""
    names = _unique_names([Path(p) for p in paths])
    return [read_run(p, name=n) for p, n in zip(paths, names)]


def iou_types_of(runs: Sequence[RunSummary]) -> list[str]:
    """The IoU types that at least one run has metrics for, in :data:`IOU_TYPES` order."""
    return [t for t in IOU_TYPES if any(isinstance(r.metrics.get(t), dict) for r in runs)]


def _iou_metrics(run: RunSummary, iou_type: str) -> dict[str, Any]:
    found = run.metrics.get(iou_type)
    return found if isinstance(found, dict) else {}


def _errors(metrics: dict[str, Any]) -> dict[str, Any]:
    errors = metrics.get("errors")
    return errors if isinstance(errors, dict) else {}


def _sections(runs: Sequence[RunSummary], iou_type: str) -> dict[str, list[_Row]]:
    """The rows of one IoU type: ``metrics``, ``per_class`` and (when any run has them) ``errors``."""
    per_run = [_iou_metrics(r, iou_type) for r in runs]
    sections: dict[str, list[_Row]] = {
        "metrics": [_Row(n, n, [_number(m.get(n)) for m in per_run]) for n in METRIC_NAMES]
    }
    class_names: dict[str, None] = {}  # insertion-ordered set: the first run's class order
    for m in per_run:
        per_class = m.get("per_class")
        if isinstance(per_class, dict):
            class_names.update(dict.fromkeys(str(c) for c in per_class))
    sections["per_class"] = [
        _Row(c, c, [_number((m.get("per_class") or {}).get(c)) for m in per_run]) for c in class_names
    ]
    errors = [_errors(m) for m in per_run]
    if any(errors):
        deltas: list[dict[str, Any]] = [e["delta_ap"] if isinstance(e.get("delta_ap"), dict) else {} for e in errors]
        extra = sorted({str(k) for d in deltas for k in d} - set(ERROR_TYPES))
        rows = [
            _Row(t, t, [_finite(d.get(t)) for d in deltas], higher_is_better=False) for t in (*ERROR_TYPES, *extra)
        ]
        rows += [
            _Row(key, label, [_finite(e.get(key)) for e in errors], higher_is_better=False)
            for key, label in _ERROR_SUMMARIES
            if any(key in e for e in errors)
        ]
        sections["errors"] = rows
    return sections


def _check_iou_type(runs: Sequence[RunSummary], iou_type: str) -> None:
    if iou_type not in IOU_TYPES:
        raise DataError(f"unknown IoU type {iou_type!r}; choose one of {', '.join(IOU_TYPES)}")
    if not any(_iou_metrics(r, iou_type) for r in runs):
        have = ", ".join(iou_types_of(runs)) or "none"
        raise DataError(
            f"none of the runs has {iou_type} metrics ({_KIND[iou_type]}); the runs have: {have}"
        )


def compare_dict(runs: Sequence[RunSummary], iou_types: Sequence[str] | None = None) -> dict[str, Any]:
    """The comparison as JSON-ready data (``compare.json``).

    Returns::

        {"runs": [{"name", "path", "evaluated_on": {...}, "iterations": last training iteration or None}],
         "bbox": {"metrics": {"AP": {run: value or None}, ...},
                  "per_class": {class: {run: AP or None}},
                  "errors": {error type: {run: dAP or None}},     # when any run has errors
                  "best": {"metrics": {"AP": [run, ...]}, ...}},   # ties: several runs
         "segm": {...},                                            # when any run has masks
         "notes": ["...", ...]}

    Values are fractions in ``[0, 1]``; ``None`` where a run lacks the number or has
    nothing to measure (COCO's -1).

    Args:
        runs: from :func:`read_runs`.
        iou_types: the IoU types to include (default: every one a run has).
    """
    names = [r.name for r in runs]
    out: dict[str, Any] = {
        "runs": [
            {
                "name": r.name,
                "path": str(r.path),
                "evaluated_on": r.evaluated_on,
                "iterations": _last_train_iteration(r),
            }
            for r in runs
        ]
    }
    for iou_type in iou_types if iou_types is not None else iou_types_of(runs):
        _check_iou_type(runs, iou_type)
        block: dict[str, Any] = {"best": {}}
        for section, rows in _sections(runs, iou_type).items():
            block[section] = {row.key: dict(zip(names, row.values)) for row in rows}
            block["best"][section] = {row.key: [names[i] for i in row.best()] for row in rows}
        out[iou_type] = block
    out["notes"] = _notes(runs)
    return out


def _last_train_iteration(run: RunSummary) -> int | None:
    iters = [_number(rec.get("iter")) for rec in run.records or [] if rec.get("type") == "train"]
    found = [int(it) for it in iters if it is not None]
    return max(found) if found else None


def _notes(runs: Sequence[RunSummary]) -> list[str]:
    """Warnings about numbers that do not compare: different image counts or skipped images."""
    notes = []
    totals = {r.name: r.evaluated_on["images"]["evaluated"] for r in runs if "images" in r.evaluated_on}
    if len(set(totals.values())) > 1:
        counts = ", ".join(f"{n}: {c}" for n, c in totals.items())
        notes.append(f"the runs were evaluated on different numbers of images ({counts}); their numbers do not compare")
    for r in runs:
        skipped = r.evaluated_on.get("images", {}).get("skipped")
        if skipped:
            notes.append(f"{r.name} skipped {skipped} unreadable images (its metrics.json lists them)")
    return notes


def _cell(value: float | None, best: bool) -> str:
    return ("-" if value is None else f"{value:.{_DECIMALS}f}") + (_BEST if best else " ")


def _images_cell(run: RunSummary) -> str:
    images = run.evaluated_on.get("images")
    if not images:
        return "- "
    total = images.get("total")
    return f"{images['evaluated']}/{total} " if total is not None else f"{images['evaluated']} "


def compare_table(runs: Sequence[RunSummary], iou_type: str = "bbox") -> str:
    """An aligned text table of one IoU type, one column per run (see the module docstring).

    Raises:
        DataError: ``iou_type`` is unknown or no run has metrics for it.
    """
    _check_iou_type(runs, iou_type)
    sections = _sections(runs, iou_type)
    lacking = [r.name for r in runs if not _iou_metrics(r, iou_type)]
    head: list[tuple[str, list[str]]] = [
        ("images", [_images_cell(r) for r in runs]),
        ("evaluated at iter", [f"{r.evaluated_on.get('iteration', '-')} " for r in runs]),
    ]
    body: list[tuple[str, list[str]]] = []
    titles = {
        "per_class": "per-class AP (IoU=0.50:0.95)",
        "errors": "TIDE dAP: AP gained by fixing each error type (lower is better)",
    }
    for section, rows in sections.items():
        if section in titles and rows:
            body.append((titles[section], []))
        indent = "  " if section in titles else ""
        for row in rows:
            best = set(row.best())
            body.append((indent + row.label, [_cell(v, i in best) for i, v in enumerate(row.values)]))
    label_width = max(len(label) for label, cells in head + body if cells)
    widths = [
        max(len(r.name) + 1, *(len(cells[i]) for _, cells in head + body if cells)) for i, r in enumerate(runs)
    ]

    def line(label: str, cells: list[str]) -> str:
        return "  ".join([f"{label:<{label_width}}", *(f"{c:>{w}}" for c, w in zip(cells, widths))]).rstrip()

    lines = [
        f"{iou_type} ({_KIND[iou_type]}), fractions (0-1) as in metrics.json; {_BEST} marks the best of each row",
        line("", [f"{r.name} " for r in runs]),
    ]
    lines += [line(label, cells) if cells else label for label, cells in head + body]
    lines += [
        "AP: IoU 0.50:0.95, AP50/AP75: at IoU 0.5/0.75; AR1/AR10/AR100: at most 1/10/100 detections per image;",
        "s/m/l: small/medium/large objects; -: nothing to measure, or not in the run's metrics",
    ]
    if lacking:
        lines.append(f"no {iou_type} metrics in: {', '.join(lacking)}")
    if "errors" in sections:
        no_errors = [r.name for r in runs if _iou_metrics(r, iou_type) and not _errors(_iou_metrics(r, iou_type))]
        if no_errors:
            lines.append(f"no error analysis in: {', '.join(no_errors)}")
    return "\n".join(lines) + "\n"


def format_runs(runs: Sequence[RunSummary]) -> str:
    """One line per run: its folder and what its metrics were computed on; then the notes."""
    width = max((len(r.name) for r in runs), default=0)
    lines = []
    for r in runs:
        src = r.evaluated_on
        parts = []
        if "images" in src:
            parts.append(f"{src['images']['evaluated']} of {src['images'].get('total', '?')} images")
        for key in ("data", "results", "precision", "backend"):
            if key in src:
                parts.append(f"results {src[key]}" if key == "results" else str(src[key]))
        if r.records is None:
            parts.append("no metrics.jsonl (no training curve)")
        lines.append(f"  {r.name:<{width}}  {r.path}" + (f"  ({'; '.join(parts)})" if parts else ""))
    lines += [f"note: {n}" for n in _notes(runs)]
    return "runs:\n" + "\n".join(lines) + "\n"
