"""``train.threads: auto``: the CPU thread count that trains fastest now, found by timing steps.

On a CPU that other programs share, torch's default of one thread per core can be the
slowest choice: every parallel region waits for its slowest thread, and a thread that
shares its core with another busy process runs at half speed, so the whole step does.
On 2 cores beside one CPU-bound process the shapes recipe trains at 20.5 img/s with 2
threads and 26.2 with 1; alone, 2 threads give 41.9 and 1 gives 26.5
(``python tools/train_throughput.py detkit:shapes_faster_rcnn.yaml train.threads=N``).

:class:`ThreadTuner` times a few training steps at each candidate count every
``period_s`` seconds and keeps the fastest until the next trial, so it follows a load
that comes and goes. The first steps after a switch are not counted (thread pools
start, caches refill). Float reductions may round differently with another thread
count, so a run with ``auto`` is not bit-for-bit repeatable; set a number for that.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence

import torch

logger = logging.getLogger(__name__)

#: steps after the start before the first trial (the first steps allocate memory and are slow)
FIRST_TRIAL_AFTER = 10


def candidate_counts(cores: int) -> list[int]:
    """The thread counts worth trying on ``cores`` cores: all of them, one fewer, half, one."""
    return sorted({max(1, c) for c in (cores, cores - 1, cores // 2, 1)}, reverse=True)


class ThreadTuner:
    """Switch torch's CPU thread count to whichever of ``candidates`` runs steps fastest.

    The training loop calls :meth:`before_step` before each step and
    :meth:`after_step` with the step's seconds after it. Between trials the current
    choice runs; a trial runs ``skip + trial_steps`` steps per candidate and picks the
    smallest median of the timed ones.

    Args:
        candidates: thread counts to choose from; the first is the starting choice.
        period_s: seconds between the end of one trial and the start of the next.
        trial_steps: timed steps per candidate in a trial.
        skip: untimed steps after each switch.
        set_threads: applies a count (default ``torch.set_num_threads``).
    """

    def __init__(
        self,
        candidates: Sequence[int],
        *,
        period_s: float = 60.0,
        trial_steps: int = 4,
        skip: int = 1,
        set_threads: Callable[[int], None] | None = None,
    ) -> None:
        if not candidates or min(candidates) < 1:
            raise ValueError(f"thread counts must be >= 1, got {list(candidates)}")
        self.candidates = list(dict.fromkeys(candidates))
        self.period_s = period_s
        self.trial_steps = trial_steps
        self.skip = skip
        self._set_threads = set_threads
        #: the thread count chosen by the last trial (the first candidate before any)
        self.choice = self.candidates[0]
        #: the median step seconds of each candidate in the last trial
        self.last_trial: dict[int, float] = {}
        self._steps = 0
        self._since_trial = 0.0  # step seconds summed since the last trial ended
        self._plan: list[tuple[int, bool]] = []  # (threads, timed) for the steps of a running trial
        self._times: dict[int, list[float]] = {}
        self._current: tuple[int, bool] | None = None
        self._applied: int | None = None

    @property
    def active(self) -> bool:
        """Whether there is anything to choose between."""
        return len(self.candidates) > 1

    @property
    def threads(self) -> int:
        """The thread count of the step that runs now."""
        return self._current[0] if self._current is not None else self.choice

    def before_step(self) -> None:
        """Start a trial when one is due, and set the thread count for the coming step."""
        if not self.active:
            return
        if not self._plan and self._trial_due():
            self._plan = [(c, i >= self.skip) for c in self.candidates for i in range(self.skip + self.trial_steps)]
            self._times = {c: [] for c in self.candidates}
        self._current = self._plan.pop(0) if self._plan else None
        self._apply(self.threads)

    def after_step(self, seconds: float) -> None:
        """Record the step that ran since :meth:`before_step`; choose when a trial ends."""
        if not self.active:
            return
        self._steps += 1
        if self._current is None:
            self._since_trial += seconds
            return
        threads, timed = self._current
        if timed:
            self._times[threads].append(seconds)
        if not self._plan:
            self._choose()

    def _trial_due(self) -> bool:
        if not self.last_trial:
            return self._steps >= FIRST_TRIAL_AFTER
        return self._since_trial >= self.period_s

    def _choose(self) -> None:
        self.last_trial = {c: statistics.median(t) for c, t in self._times.items() if t}
        best = min(self.last_trial, key=lambda c: self.last_trial[c])
        if best != self.choice:
            others = ", ".join(f"{c}: {s:.3g} s" for c, s in self.last_trial.items() if c != best)
            logger.info(
                "train.threads=auto: %d thread%s now (%.3g s per step; %s)",
                best, "" if best == 1 else "s", self.last_trial[best], others,
            )
        self.choice = best
        self._current = None
        self._since_trial = 0.0
        self._apply(best)

    def _apply(self, threads: int) -> None:
        if threads != self._applied:
            (self._set_threads or torch.set_num_threads)(threads)
            self._applied = threads
