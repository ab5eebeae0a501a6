"""Atomic file output: write to a temporary file beside the target, then rename.

A run that is interrupted never leaves a half-written metrics file, image or
checkpoint behind: either the old file or the complete new one is there.

The file gets the permissions a plain ``open(path, "w")`` would give it,
``0o666`` less the process's umask (``0o644`` under the usual umask ``022``),
not the ``0o600`` of a temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def _umask_from_proc() -> int | None:
    """The umask from ``/proc/self/status`` (Linux 4.7 and later), or None where it is not there."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split(":", 1)[1].strip(), 8)
    except (OSError, ValueError):
        pass
    return None


def read_umask() -> int:
    """The process's umask.

    Read from ``/proc/self/status`` where it can be, which changes nothing.
    Elsewhere it is set and set back (``os.umask``), which is not safe while other
    threads create files; this module does that only once, at import.
    """
    umask = _umask_from_proc()
    if umask is None:
        umask = os.umask(0o022)
        os.umask(umask)
    return umask


_UMASK_AT_IMPORT = read_umask()


def output_mode() -> int:
    """The permission bits of a written file: ``0o666`` less the umask (``0o644`` under umask ``022``).

    The umask is read anew where ``/proc`` tells it, else the one at import is used.
    """
    umask = _umask_from_proc()
    if umask is None:
        umask = _UMASK_AT_IMPORT
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it is renamed onto ``path`` on success.

    The renamed file has the mode of :func:`output_mode`, as a file created with
    ``open`` would.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, output_mode())  # mkstemp makes it 0o600
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


__all__ = ["atomic_path", "atomic_write", "output_mode", "read_umask", "write_json", "write_text"]
