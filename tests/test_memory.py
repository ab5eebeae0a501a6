"""detkit.memory: with reuse_freed_memory, freed feature-map-sized blocks are reused instead of faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from detkit.memory import allocator, reuse_freed_memory
applied = reuse_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 * 2**20)  # 64 MB, freed at once: like one feature map per image
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(applied, allocator(), faults)
"""


def _probe(**env: str) -> tuple[str, str, int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )
    assert done.returncode == 0, done.stderr
    applied, name, faults = done.stdout.split()
    return applied, name, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting applies to glibc's malloc only")
def test_freed_blocks_are_reused_and_the_environment_can_keep_mallocs_defaults():
    pages = 20 * 64 * 2**20 // 4096  # what faulting every block in afresh costs
    applied, name, faults = _probe()
    assert (applied, name) == ("True", "reuse")
    assert faults < pages / 2  # measured 0.1-0.3 of it
    applied, name, faults = _probe(DETKIT_MALLOC="default")
    assert (applied, name) == ("False", "default")
    assert faults > 0.9 * pages
