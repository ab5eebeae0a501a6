"""``train.init_weights``: start a model from another model's weights, across class sets.

A weight file may be a detkit checkpoint, a torchvision detection state dict (any
model a registered ``importer`` converts) or a classification state dict (its keys
are looked for under each backbone of the model). Every tensor whose name and shape
fit is copied. Class-dependent tensors, which stages declare with ``class_rows()``
(:class:`~detkit.stages.ClassRows`), are matched row by row by class *name*: the
rows of a class the file also has (and the background and box rows) are copied, the
rows of a new class keep the fresh model's initialization. Any other mismatch is an
error naming the tensor, unless ``strict=False`` skips it.

:func:`init_weights` returns a :class:`TransferReport` whose :meth:`~TransferReport.summary`
is the one line ``detkit train`` prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from detkit.engine.checkpoint import FORMAT as CHECKPOINT_FORMAT
from detkit.errors import CheckpointError, DetkitError
from detkit.registry import ComponentRegistry
from detkit.stages import Backbone, ClassRows
from detkit.weights import fetch

#: A source tensor layout: name -> tensor, with the class names the rows follow (None when unknown).
State = dict[str, Tensor]


@dataclass
class WeightSource:
    """A weight file read and mapped onto the model's names.

    Attributes:
        state: tensors under the model's names.
        class_names: the classes the file's class rows follow, or ``None`` (a classifier).
        description: what the file was, for messages.
    """

    state: State
    class_names: list[str] | None
    description: str


@dataclass
class TransferReport:
    """What :func:`init_weights` did.

    Attributes:
        kept: tensors copied whole.
        remapped: class-dependent tensors rebuilt row by row (name -> classes kept from the file).
        reinitialized: class-dependent tensors left as initialized (no class in common).
        skipped: tensors that did not fit and were skipped (``strict=False`` only).
        missing: model tensors the file does not have (left as initialized).
        unused: file tensors the model does not have.
        new_classes: the model's classes the file does not have (``[]`` when its classes are unknown).
    """

    source: str
    description: str
    kept: list[str] = field(default_factory=list)
    remapped: dict[str, list[str]] = field(default_factory=dict)
    reinitialized: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts, and the names of what was (re)initialized."""
        parts = [f"{len(self.kept)} tensors kept"]
        if self.remapped:
            shared = sorted({c for classes in self.remapped.values() for c in classes})
            rebuilt = f"{len(self.remapped)} class-dependent tensors rebuilt ({_names(list(self.remapped))}): "
            if shared:
                rebuilt += f"the rows of {_count(len(shared), 'class', 'classes')} kept by name ({_names(shared)})"
            else:
                rebuilt += "no class in common, the class-free rows (background, box terms) kept"
            if self.new_classes:
                rebuilt += f", {_count(len(self.new_classes), 'new class', 'new classes')} started fresh"
                rebuilt += f" ({_names(self.new_classes)})"
            parts.append(rebuilt)
        if self.reinitialized:
            parts.append(f"{len(self.reinitialized)} re-initialized for the new classes ({_names(self.reinitialized)})")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped as they do not fit ({_names(self.skipped)})")
        if self.missing:
            parts.append(f"{len(self.missing)} not in the file ({_names(self.missing)})")
        if self.unused:
            parts.append(f"{len(self.unused)} of the file unused")
        return f"init_weights {self.source} ({self.description}): " + "; ".join(parts)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _names(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... {len(items) - limit} more" if len(items) > limit else "")


def class_rows_of(model: nn.Module) -> dict[str, ClassRows]:
    """Every class-dependent tensor of ``model`` (full state-dict names) declared by its stages' ``class_rows()``."""
    found: dict[str, ClassRows] = {}
    for prefix, module in model.named_modules():
        declared = getattr(module, "class_rows", None)
        if callable(declared):
            found |= {f"{prefix}.{name}" if prefix else name: rows for name, rows in declared().items()}
    return found


def read_weight_source(
    url_or_path: str, model: nn.Module, *, registry: ComponentRegistry | None = None
) -> WeightSource:
    """Read a weight file and map its tensors onto ``model``'s state-dict names (see the module docstring).

    Raises:
        CheckpointError: the file cannot be read, or none of its tensors belongs to ``model``.
    """
    path = fetch(url_or_path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read weight file {url_or_path!r}: it is not a torch file, or is corrupt ({type(exc).__name__})"
        ) from exc
    own = model.state_dict()
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        names = [str(n) for n in data.get("class_names") or []] or None
        return WeightSource(_tensors(data.get("model"), url_or_path), names, "detkit checkpoint")
    state = _tensors(data.get("state_dict", data.get("model", data)) if isinstance(data, dict) else data, url_or_path)
    candidates = [WeightSource(state, None, "state dict")]
    candidates += _as_detection_import(state, registry)
    candidates += _as_backbone(state, model)
    best = max(candidates, key=lambda c: sum(1 for k, v in c.state.items() if k in own and own[k].dim() == v.dim()))
    if not any(k in own for k in best.state):
        raise CheckpointError(
            f"weight file {url_or_path!r}: none of its {len(state)} tensors belongs to this model "
            f"(first keys: {', '.join(list(state)[:3])}); give a detkit checkpoint, a torchvision detection "
            "state dict or a classifier's state dict of the backbone"
        )
    return best


def _tensors(data: Any, source: str) -> State:
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"weight file {source!r} does not hold a state dict of tensors")
    return {str(k): v for k, v in data.items()}


def _as_detection_import(state: State, registry: ComponentRegistry | None) -> list[WeightSource]:
    """The file as each registered torchvision importer converts it (those that accept it)."""
    if registry is None:
        return []
    found = []
    for name in registry.names("importer"):
        importer = registry.get("importer", name).factory()
        try:
            _, class_names, converted = importer.convert(state)
        except DetkitError:
            continue
        found.append(WeightSource(dict(converted), list(class_names), f"torchvision state dict, as {name}"))
    return found


def _as_backbone(state: State, model: nn.Module) -> list[WeightSource]:
    """The file as a classifier's state dict, under each backbone of ``model`` (its head's keys unused)."""
    return [
        WeightSource({f"{prefix}.{k}": v for k, v in state.items()}, None, f"classifier state dict, as {prefix}")
        for prefix, module in model.named_modules()
        if prefix and isinstance(module, Backbone)
    ]


def init_weights(
    model: nn.Module,
    url_or_path: str,
    *,
    class_names: Sequence[str],
    registry: ComponentRegistry | None = None,
    strict: bool = True,
) -> TransferReport:
    """Copy the weights of a file into ``model`` wherever they fit (see the module docstring).

    Args:
        model: a freshly built model (its initialization stays where nothing is copied).
        url_or_path: the weight file, local or a URL.
        class_names: the model's classes, label order.
        registry: the component registry, whose importers read torchvision detection files.
        strict: a tensor that does not fit and is not class-dependent is an error; with
            ``False`` it is skipped (and reported).

    Raises:
        CheckpointError: an unreadable file, or (strict) a tensor that does not fit.
    """
    source = read_weight_source(url_or_path, model, registry=registry)
    own, layouts = model.state_dict(), class_rows_of(model)
    report = TransferReport(source=str(url_or_path), description=source.description)
    new_state: State = {}
    for name, target in own.items():
        value = source.state.get(name)
        if value is None:
            if not name.endswith("num_batches_tracked"):
                report.missing.append(name)
            continue
        layout = layouts.get(name)
        if layout is not None and (value.shape != target.shape or source.class_names != list(class_names)):
            remapped = _remap_rows(value, target, layout, source.class_names, list(class_names))
            if remapped is None:
                report.reinitialized.append(name)
            else:
                new_state[name], report.remapped[name] = remapped
            continue
        if value.shape != target.shape:
            if strict:
                raise CheckpointError(
                    f"weight file {url_or_path!r} does not fit: {name}: file {tuple(value.shape)} vs model "
                    f"{tuple(target.shape)}, and it is not a class-dependent layer; use weights of the same "
                    "architecture, or set train.init_weights_strict=false to skip such tensors"
                )
            report.skipped.append(name)
            continue
        new_state[name] = value
        report.kept.append(name)
    report.unused = [k for k in source.state if k not in own]
    if source.class_names is not None:
        report.new_classes = [c for c in class_names if c not in source.class_names]
    model.load_state_dict(new_state, strict=False)
    return report


def _remap_rows(
    value: Tensor, target: Tensor, layout: ClassRows, old_names: list[str] | None, new_names: list[str]
) -> tuple[Tensor, list[str]] | None:
    """``target`` with the rows of every class ``value`` shares by name (and the class-free rows) copied.

    Returns ``None`` when nothing can be matched: the file's classes are unknown, its
    rows do not follow ``layout``, or the tensors differ beyond the class rows.
    """
    if old_names is None or value.shape[1:] != target.shape[1:] or value.shape[0] != layout.size(len(old_names)):
        return None
    index = {name: i for i, name in enumerate(old_names)}
    shared = [(new, index[name]) for new, name in enumerate(new_names) if name in index]
    out = target.detach().clone()
    rows_new, rows_old = layout.rows(len(new_names), None), layout.rows(len(old_names), None)
    for new, old in shared:
        rows_new += layout.rows(len(new_names), new)
        rows_old += layout.rows(len(old_names), old)
    if not rows_new:
        return None
    out[rows_new] = value[rows_old].to(out.dtype)
    return out, [new_names[new] for new, _ in shared]


__all__ = ["TransferReport", "WeightSource", "class_rows_of", "init_weights", "read_weight_source"]
