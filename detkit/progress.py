"""Progress output that suits both terminals and logs.

:func:`progress` returns a tqdm bar when stderr is a terminal. When it is not
(a log file, CI, ``nohup``), a tqdm bar would write a carriage-return frame
for every redraw into the log; :func:`progress` returns a :class:`LogProgress`
instead, which prints one plain line at most every ``interval`` seconds::

    train: 120/2016 it (6%) 3.1 it/s, eta 10m12s, loss=0.84 lr=0.02

and one last line when it closes. The interval defaults to the environment
variable ``DETKIT_LOG_EVERY`` (seconds), else 10.

:func:`write` prints a message without breaking a tqdm bar on the terminal.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Generic, TextIO, TypeAlias, TypeVar, overload

from tqdm import tqdm

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The environment variable holding the seconds between two log lines.
INTERVAL_ENV = "DETKIT_LOG_EVERY"
#: Seconds between two log lines when ``DETKIT_LOG_EVERY`` is not set.
DEFAULT_INTERVAL = 10.0


def default_interval() -> float:
    """Seconds between two log lines: ``$DETKIT_LOG_EVERY``, else :data:`DEFAULT_INTERVAL`.

    A value that is not a number of seconds (>= 0) is ignored with a warning.
    """
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        logger.warning("%s=%r is not a number of seconds (>= 0); using %g", INTERVAL_ENV, raw, DEFAULT_INTERVAL)
        return DEFAULT_INTERVAL
    return seconds


def write(msg: str, file: TextIO | None = None, end: str = "\n") -> None:
    """Print ``msg`` to ``file`` (default stdout) without breaking a tqdm bar on the terminal."""
    tqdm.write(msg, file=file, end=end)


def format_seconds(seconds: float) -> str:
    """A duration as ``45s``, ``10m12s`` or ``2h05m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _format_value(value: Any) -> str:
    """A postfix value: numbers to four significant digits, anything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class LogProgress(Generic[T]):
    """A progress report for logs: plain lines, at most one every ``interval`` seconds.

    It offers the part of tqdm's interface detkit uses: iteration, :meth:`update`,
    :meth:`set_postfix`, a settable :attr:`total`, :meth:`refresh`, :meth:`write`,
    :meth:`close` and use as a context manager. It never writes ``\\r``.

    Args:
        iterable: what to iterate over, if the report wraps a loop.
        total: the expected number of steps; ``len(iterable)`` where it has one.
        desc: the line's prefix (``"train"``).
        unit: the name of one step (``"it"``, ``"img"``).
        enabled: False makes it silent (it still counts).
        interval: the least seconds between two lines; ``None`` reads
            :func:`default_interval`.
        file: where the lines go; ``None`` is ``sys.stderr`` at the time of printing.
        clock: a function returning seconds (``time.monotonic``); tests pass a fake one.
    """

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *,
        total: float | None = None,
        desc: str = "",
        unit: str = "it",
        enabled: bool = True,
        interval: float | None = None,
        file: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.enabled = enabled
        self.interval = default_interval() if interval is None else float(interval)
        self.file = file
        self.n = 0
        self.postfix: dict[str, str] = {}
        self._clock = clock
        self._start = clock()
        self._last_print = self._start
        self._printed_n: int | None = None  # ``n`` at the last line printed
        self._closed = False

    # ------------------------------------------------------------------ the tqdm subset

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("this progress report wraps no iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogProgress[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps; print a line if ``interval`` seconds passed since the last one."""
        self.n += n
        self._maybe_print()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Show ``name=value`` pairs at the end of the next lines (they replace the earlier ones)."""
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = {str(k): _format_value(v) for k, v in items.items()}
        if refresh:
            self._maybe_print()

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """Change the line's prefix."""
        self.desc = desc or ""
        if refresh:
            self._maybe_print()

    def refresh(self) -> None:
        """Print a line if ``interval`` seconds passed since the last one (a log is not redrawn)."""
        self._maybe_print()

    @staticmethod
    def write(msg: str, file: TextIO | None = None, end: str = "\n") -> None:
        """Print ``msg`` to ``file`` (default stdout), as ``tqdm.write`` does."""
        write(msg, file=file, end=end)

    def close(self) -> None:
        """Print a last line if anything happened since the previous one; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self.enabled and self.n != self._printed_n and (self.n or self._printed_n is not None):
            self._print(final=True)

    # ------------------------------------------------------------------ the lines

    def line(self, *, final: bool = False) -> str:
        """The report as one line: count, share of the total, rate, eta (or time taken), postfix."""
        elapsed = self._clock() - self._start
        parts = [f"{self.desc}: " if self.desc else ""]
        if self.total:
            percent = 100 * self.n / self.total
            parts.append(f"{self.n}/{_format_count(self.total)} {self.unit} ({percent:.0f}%)")
        else:
            parts.append(f"{self.n} {self.unit}")
        rate = self.n / elapsed if elapsed > 0 else 0.0
        details = []
        if rate > 0:
            details.append(f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}")
        if final:
            details.append(f"in {format_seconds(elapsed)}")
        elif rate > 0 and self.total and self.total > self.n:
            details.append(f"eta {format_seconds((self.total - self.n) / rate)}")
        text = "".join(parts)
        if details:
            text += " " + ", ".join(details)
        if self.postfix:
            text += ", " + " ".join(f"{k}={v}" for k, v in self.postfix.items())
        return text

    def _maybe_print(self) -> None:
        if not self.enabled or self._closed:
            return
        if self._clock() - self._last_print >= self.interval:
            self._print()

    def _print(self, *, final: bool = False) -> None:
        out = self.file if self.file is not None else sys.stderr
        print(self.line(final=final), file=out, flush=True)
        self._last_print = self._clock()
        self._printed_n = self.n


def _format_count(value: float) -> str:
    """A total as an integer where it is one."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


#: What :func:`progress` returns: a tqdm bar on a terminal, else a :class:`LogProgress`.
ProgressBar: TypeAlias = "tqdm | LogProgress[Any]"


@overload
def progress(
    iterable: Iterable[T],
    *,
    total: float | None = ...,
    desc: str = ...,
    unit: str = ...,
    enabled: bool = ...,
    leave: bool = ...,
    interval: float | None = ...,
    dynamic_ncols: bool = ...,
) -> tqdm | LogProgress[T]: ...


@overload
def progress(
    iterable: None = ...,
    *,
    total: float | None = ...,
    desc: str = ...,
    unit: str = ...,
    enabled: bool = ...,
    leave: bool = ...,
    interval: float | None = ...,
    dynamic_ncols: bool = ...,
) -> tqdm | LogProgress[Any]: ...


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    leave: bool = True,
    interval: float | None = None,
    dynamic_ncols: bool = False,
) -> tqdm | LogProgress[T]:
    """A progress bar on a terminal, plain log lines elsewhere, nothing when disabled.

    Use it as tqdm: ``for x in progress(items, desc="check")``, or
    ``with progress(total=n) as bar: bar.update(1)``.

    Args:
        iterable: what to iterate over, if the bar wraps a loop.
        total: the expected number of steps; ``len(iterable)`` where it has one.
        desc: the bar's or line's prefix.
        unit: the name of one step.
        enabled: False shows nothing (the object still iterates and counts).
        leave: keep the tqdm bar on the terminal when it ends (log lines always stay).
        interval: the least seconds between two log lines; ``None`` reads
            ``$DETKIT_LOG_EVERY``, else 10.
        dynamic_ncols: let the tqdm bar follow the terminal's width.

    Returns:
        A ``tqdm`` bar when enabled and stderr is a terminal, else a :class:`LogProgress`
        (silent when disabled).
    """
    if enabled and _stderr_is_terminal():
        return tqdm(iterable, total=total, desc=desc or None, unit=unit, leave=leave, dynamic_ncols=dynamic_ncols)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, enabled=enabled, interval=interval)


def _stderr_is_terminal() -> bool:
    """Whether stderr is a terminal (False where it cannot tell)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


__all__ = ["DEFAULT_INTERVAL", "INTERVAL_ENV", "LogProgress", "ProgressBar", "default_interval", "progress", "write"]
