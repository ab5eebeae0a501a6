"""Atomic file output: write to a temporary file beside the target, then rename.

A run that is interrupted never leaves a half-written metrics file, image or
checkpoint behind: either the old file or the complete new one is there.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it is renamed onto ``path`` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], None], *, binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file, then rename it onto ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2) -> None:
    """Atomically write ``data`` as JSON."""
    atomic_write(path, lambda f: json.dump(data, f, indent=indent))


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write a text file."""

    def write(f: IO[Any]) -> None:
        f.write(text)

    atomic_write(path, write)


__all__ = ["atomic_path", "atomic_write", "write_json", "write_text"]
