"""Load weight files (local paths or URLs) into modules, with clear errors."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkit.errors import CheckpointError
from detkit.io import atomic_path

CACHE_DIR = Path(os.environ.get("DETKIT_CACHE", Path.home() / ".cache" / "detkit"))


def fetch(url_or_path: str) -> Path:
    """A local path for ``url_or_path``, downloading URLs once into :data:`CACHE_DIR`."""
    if "://" not in url_or_path:
        path = Path(url_or_path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"weight file {url_or_path!r} does not exist")
        return path
    target = CACHE_DIR / url_or_path.rstrip("/").rsplit("/", 1)[-1]
    if target.is_file():
        return target
    try:
        with atomic_path(target) as tmp, urllib.request.urlopen(url_or_path, timeout=30) as response:
            tmp.write_bytes(response.read())
    except (urllib.error.URLError, OSError) as exc:
        raise CheckpointError(
            f"cannot download {url_or_path}: {exc}. Without internet, download the file elsewhere "
            "and pass its local path instead"
        ) from exc
    return target


def read_state_dict(url_or_path: str) -> dict[str, Any]:
    """A state dict from a file: a plain state dict, a detkit checkpoint or ``{"state_dict"|"model": ...}``."""
    path = fetch(url_or_path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read weight file {str(path)!r}: {exc}") from exc
    if isinstance(data, dict):
        for key in ("model", "state_dict"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"weight file {str(path)!r} does not hold a state dict of tensors")
    return data


def load_weights_file(module: nn.Module, url_or_path: str, *, strict: bool = True) -> None:
    """Load a state dict file into ``module``.

    With ``strict=False`` keys the module lacks (a classifier head, say) are skipped,
    but every key of the module must be present and every shape must agree.
    """
    state = read_state_dict(url_or_path)
    own = module.state_dict()
    if not strict:
        state = {k: v for k, v in state.items() if k in own}
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise CheckpointError(f"weight file {url_or_path!r} does not fit: " + "; ".join(mismatched[:10]))
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = result.unexpected_keys if strict else []
    if missing or unexpected:
        raise CheckpointError(
            f"weight file {url_or_path!r} does not fit {type(module).__name__}: "
            f"missing {missing[:10]}, unexpected {unexpected[:10]}"
        )


__all__ = ["CACHE_DIR", "fetch", "load_weights_file", "read_state_dict"]
