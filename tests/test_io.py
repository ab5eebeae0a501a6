"""detkit.io: atomic writes, and the permissions of the files they leave."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from detkit import io

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes and the umask are POSIX's")


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process's umask after the test."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path: Path, umask: None, mask: int, expected: int) -> None:
    os.umask(mask)
    assert io.read_umask() == mask
    io.write_text(tmp_path / "a.txt", "hello")
    io.write_json(tmp_path / "sub" / "metrics.json", {"ap": 0.5})
    with io.atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"\0")
    for name in ("a.txt", "sub/metrics.json", "c.bin"):
        assert _mode(tmp_path / name) == expected, name
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "c.bin", "sub"]  # no temporary files left


def test_without_proc_the_umask_read_at_import_is_used(tmp_path: Path, umask: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io, "_umask_from_proc", lambda: None)
    os.umask(0o027)
    assert io.read_umask() == 0o027  # set and set back
    assert io.read_umask() == 0o027
    monkeypatch.setattr(io, "_UMASK_AT_IMPORT", io.read_umask())
    io.write_text(tmp_path / "a.txt", "x")
    assert _mode(tmp_path / "a.txt") == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    io.write_json(target, {"ap": 1})
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == '{\n  "ap": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
