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


def on_ci() -> bool:
    """Whether the tests run in CI (``CI=true``), where the shared data is always present."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.fixture
def shared_data() -> Callable[[str], Path]:
    """``shared_data(name)``: the path of a shared data set.

    Without it the test is skipped with the reason, except in CI (``CI=true``), where
    the data is always there and its absence is a failure rather than a silent skip.
    """

    def get(name: str) -> Path:
        path = shared_data_root() / name
        if not path.exists():
            why = f"shared data set '{name}' not found at {path} (set DETKIT_DATA to the folder holding it)"
            if on_ci():
                pytest.fail(f"{why}; CI must have it")
            pytest.skip(why)
        return path

    return get


def pytest_configure(config: pytest.Config) -> None:
    """Share the cores between pytest-xdist workers instead of oversubscribing them.

    Each worker would otherwise start as many torch threads as there are cores; on a
    2-core machine with 2 workers that makes small-tensor tests many times slower.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
