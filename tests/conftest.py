"""Shared test fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest


def shared_data_root() -> Path:
    """The shared data folder: ``$DETKIT_DATA``, else ``<repo>/../shared/data``."""
    env = os.environ.get("DETKIT_DATA")
    if env:
        return Path(env)
    return (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture
def shared_data() -> Callable[[str], Path]:
    """``shared_data(name)``: the path of a shared data set; skips the test if it is absent."""

    def get(name: str) -> Path:
        path = shared_data_root() / name
        if not path.exists():
            pytest.skip(f"shared data set '{name}' not found at {path} (set DETKIT_DATA to the folder holding it)")
        return path

    return get
