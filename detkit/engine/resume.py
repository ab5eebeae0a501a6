"""What a checkpoint needs to continue a run exactly: RNG states, the run folder's checkpoint, the log.

A training checkpoint (``last.pt``) carries a ``train_state`` beside the weights:
the optimizer, schedule, grad scaler and EMA states, the RNG states of torch (CPU and
CUDA), numpy and Python, the data position (epoch and batches done in it), the
iteration, the best AP, the seconds spent against ``train.max_minutes`` and the
current logging window. :class:`~detkit.engine.trainer.Trainer` writes and reads
it; this module holds the pieces that do not depend on the trainer.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detkit.engine.checkpoint import load_checkpoint
from detkit.errors import CheckpointError
from detkit.io import atomic_write

#: The checkpoint a run folder is resumed from.
LAST = "last.pt"


def rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU and every CUDA device), numpy and Python, as checkpoint values."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(mt), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor moved to the CPU (dicts and lists rebuilt, keys kept)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(v) for v in value)
    return value


def resume_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint to resume ``run_dir`` from, or None when it holds none."""
    path = Path(run_dir) / LAST
    return path if path.is_file() else None


def load_train_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint that can continue a run.

    Raises:
        CheckpointError: unreadable, or written without training state (an imported
            or ``best.pt``-only file: start a new run with ``train.init_weights`` instead).
    """
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint.get("train_state"), Mapping):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds weights but no training state, so the run cannot "
            "continue from it; start a new run from its weights with train.init_weights="
            f"{path}"
        )
    return checkpoint


def truncate_log(path: Path, iteration: int, *, evaluated: bool) -> int:
    """Keep the records of ``metrics.jsonl`` up to ``iteration`` (a resumed run writes the rest again).

    Args:
        evaluated: the checkpoint was written after the evaluation at ``iteration``
            (else an evaluation record at ``iteration`` is dropped too: it runs again).

    Returns the number of records dropped. The file is rewritten atomically.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            dropped += 1
            continue
        step = record.get("iter", record.get("iteration", 0))
        later = isinstance(step, int) and (step > iteration or (step == iteration and record.get("type") != "train"
                                                                    and not evaluated))
        if later:
            dropped += 1
        else:
            kept.append(line)
    atomic_write(path, lambda f: f.writelines(line + "\n" for line in kept))
    return dropped


__all__ = ["LAST", "load_train_state", "resume_checkpoint", "rng_state", "set_rng_state", "to_cpu", "truncate_log"]
