"""detkit checkpoints: the resolved config, class names, weights and versions in one file.

A checkpoint is a plain dict saved with :func:`torch.save`::

    {
        "format": "detkit-checkpoint",
        "format_version": 1,
        "config": {...},                 # the resolved config (plain YAML types)
        "class_names": ["cat", ...],     # label index -> name
        "model": {name: Tensor, ...},    # the model's state dict, on the CPU
        "meta": {
            "detkit_version": "0.1.0",
            "torch_version": "2.14.1",
            "iteration": 1200,
            "epoch": 3,
            "metrics": {"bbox": {"AP": 0.41, ...}},
            "created": "2025-01-01T12:00:00+00:00",
        },
        "train_state": {...},            # last.pt only: what a resumed run needs
    }

It holds only dicts, lists, strings, numbers, ``None`` and tensors, so
:func:`load_checkpoint` reads it with ``torch.load(weights_only=True)``, which
never runs code from the file.
"""

from __future__ import annotations

import datetime as _dt
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import detkit
from detkit.errors import CheckpointError
from detkit.io import atomic_path

FORMAT = "detkit-checkpoint"
FORMAT_VERSION = 1

#: At most this many keys are listed per kind of mismatch in :func:`load_state`.
MAX_LISTED_KEYS = 10

_CONVERT_HINT = "convert it with `detkit import-torchvision NAME IN OUT`"


def to_plain(value: Any, *, where: str = "value") -> Any:
    """``value`` with only types that ``torch.load(weights_only=True)`` accepts.

    Mappings become dicts with string keys, tuples and lists become lists, numpy
    scalars and arrays become Python numbers and lists, paths become strings;
    tensors are kept (detached, on the CPU).

    Raises:
        TypeError: a value of another type, naming where it is.
    """
    if isinstance(value, np.generic):  # before the plain types: np.float64 is a float
        return value.item()
    if value is None or type(value) in (bool, int, float, str):
        return value
    for base in (bool, int, float, str):  # subclasses (enums, ...) -> the base type
        if isinstance(value, base):
            return base(value)
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, where=f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v, where=f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: cannot store a {type(value).__name__} in a checkpoint")


def make_checkpoint(
    *,
    model: nn.Module,
    config: Mapping[str, Any],
    class_names: Sequence[str],
    meta: Mapping[str, Any] | None = None,
    train_state: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of ``model`` (see the module docstring).

    Args:
        meta: ``iteration``, ``epoch``, ``metrics`` and any other plain values;
            ``detkit_version``, ``torch_version`` and ``created`` are filled in
            when absent, ``iteration``/``epoch`` default to ``None`` and
            ``metrics`` to ``{}``.
        train_state: the trainer's state for resuming (optimizer, schedule, RNG
            states, ...; see :mod:`detkit.engine.resume`), stored as given.
    """
    full_meta: dict[str, Any] = {
        "detkit_version": detkit.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "iteration": None,
        "epoch": None,
        "metrics": {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    full_meta.update(meta or {})
    checkpoint = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": to_plain(config, where="config"),
        "class_names": [str(n) for n in class_names],
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": to_plain(full_meta, where="meta"),
    }
    if train_state is not None:
        checkpoint["train_state"] = dict(train_state)
    return checkpoint


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    config: Mapping[str, Any],
    class_names: Sequence[str],
    meta: Mapping[str, Any] | None = None,
    train_state: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint of ``model`` to ``path`` (parents are created).

    See :func:`make_checkpoint` for the arguments. Returns the path written.
    """
    checkpoint = make_checkpoint(
        model=model, config=config, class_names=class_names, meta=meta, train_state=train_state
    )
    target = Path(path)
    with atomic_path(target) as tmp:
        torch.save(checkpoint, tmp)
    return target


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read and check a detkit checkpoint written by :func:`save_checkpoint`.

    Args:
        map_location: passed to :func:`torch.load` (``"cpu"``, a device, ...).

    Returns:
        The checkpoint dict (see the module docstring).

    Raises:
        CheckpointError: the file is missing or unreadable, is not a torch file or
            is corrupt, or is a torch file but not a detkit checkpoint (a raw state
            dict, another program's checkpoint) or one from a newer detkit.
    """
    file = Path(path)
    if not file.is_file():
        what = "is a directory, not a checkpoint file" if file.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {str(file)!r} {what}")
    is_zip = zipfile.is_zipfile(file)
    try:
        obj = torch.load(file, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {str(file)!r}: {exc}") from exc
    except Exception as exc:
        if is_zip and "weights only load failed" in str(exc).lower():
            raise CheckpointError(
                f"{str(file)!r} is a torch file holding Python objects other than tensors "
                "and plain containers, so it is not a detkit checkpoint (detkit does not "
                "unpickle such files: they can run code). If it holds torchvision weights, "
                f"{_CONVERT_HINT}"
            ) from exc
        # torch's own message is a paragraph (about weights_only, or miniz internals) that
        # does not help here; it stays on the exception chain for --traceback.
        if is_zip or _starts_like_zip(file):
            what = "is an incomplete torch file (a truncated copy or download?); copy it again"
        else:
            what = "is not a torch file or is corrupt; copy it again or use a checkpoint detkit wrote"
        raise CheckpointError(f"checkpoint {str(file)!r} {what} (--traceback shows why torch refused it)") from exc
    return _check_checkpoint(obj, file)


def _starts_like_zip(file: Path) -> bool:
    """The file begins with a zip header (the start of a torch file whose end is missing)."""
    try:
        with open(file, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _check_checkpoint(obj: Any, file: Path) -> dict[str, Any]:
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        version = obj.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise CheckpointError(
                f"checkpoint {str(file)!r} has format_version {version!r}, which no detkit writes (the first "
                "is 1); the file is damaged or was made by hand: use a checkpoint detkit wrote"
            )
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {str(file)!r} has format_version {version!r}; this detkit reads up to "
                f"{FORMAT_VERSION}: upgrade detkit"
            )
        for key, kind in (
            ("config", Mapping),
            ("class_names", list),
            ("model", Mapping),
            ("meta", Mapping),
        ):
            if not isinstance(obj.get(key), kind):
                raise CheckpointError(
                    f"checkpoint {str(file)!r} lacks a valid {key!r} entry; the file is damaged: "
                    "use another checkpoint"
                )
        return dict(obj)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{str(file)!r} looks like a raw state dict ({len(obj)} tensors), not a detkit "
            f"checkpoint; {_CONVERT_HINT}"
        )
    if isinstance(obj, Mapping):
        keys = ", ".join(repr(k) for k in list(obj)[:MAX_LISTED_KEYS])
        raise CheckpointError(
            f"{str(file)!r} is a torch file but not a detkit checkpoint (top-level keys: {keys}); "
            f"if it holds torchvision weights, {_CONVERT_HINT}"
        )
    raise CheckpointError(
        f"{str(file)!r} is a torch file holding a {type(obj).__name__}, not a detkit checkpoint"
    )


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED_KEYS])
    more = len(items) - MAX_LISTED_KEYS
    return shown + (f" ... and {more} more" if more > 0 else "")


def load_state(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, path: str | os.PathLike[str]
) -> None:
    """Load ``state_dict`` into ``model`` strictly, with a readable error on mismatch.

    Args:
        path: the checkpoint the state dict came from (named in the error).

    Raises:
        CheckpointError: keys missing from or unexpected in ``state_dict``, or
            tensors whose shape differs from the model's (at most
            :data:`MAX_LISTED_KEYS` of each are listed).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if problems:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit {type(model).__name__}: "
            + "; ".join(problems)
            + ". Build the model from the checkpoint's own config (same architecture and number "
            "of classes) or pick the matching checkpoint"
        )
    model.load_state_dict(state_dict, strict=True)
