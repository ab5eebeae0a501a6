"""detkit.progress: tqdm bars on a terminal, plain rate-limited lines in logs."""

from __future__ import annotations

import io
import sys

import pytest
from tqdm import tqdm

from detkit import progress as progress_module
from detkit.progress import LogProgress, format_seconds, progress, write


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _log(clock: FakeClock, **kwargs) -> tuple[LogProgress, io.StringIO]:
    out = io.StringIO()
    return LogProgress(file=out, clock=clock, **kwargs), out


def test_lines_at_most_every_interval_with_rate_eta_and_postfix() -> None:
    clock = FakeClock()
    bar, out = _log(clock, total=2016, desc="train", unit="it", interval=10)
    for _ in range(30):  # 30 updates of 4 iterations, one second apart: a line at 10 s, 20 s, 30 s
        clock.now += 1
        bar.update(4)
        bar.set_postfix(loss=0.84, lr="0.02", refresh=False)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "train: 40/2016 it (2%) 4 it/s, eta 8m14s, loss=0.84 lr=0.02"
    assert lines[2] == "train: 120/2016 it (6%) 4 it/s, eta 7m54s, loss=0.84 lr=0.02"
    assert len(lines) == 3  # nothing happened after the last line, so close() adds none
    assert "\r" not in out.getvalue()


def test_close_adds_a_final_line_with_the_time_taken() -> None:
    clock = FakeClock()
    out = io.StringIO()
    with LogProgress(range(5), desc="check", unit="img", interval=60, clock=clock, file=out) as bar:
        seen = []
        for i in bar:
            clock.now += 20
            seen.append(i)
    assert seen == [0, 1, 2, 3, 4]
    lines = out.getvalue().splitlines()
    # a line once 60 s passed (after the 3rd image: the update follows the loop body), then the final one
    assert lines == ["check: 3/5 img (60%) 20 s/img, eta 40s", "check: 5/5 img (100%) 20 s/img, in 1m40s"]


def test_total_can_change_and_unknown_totals_show_counts() -> None:
    clock = FakeClock()
    bar, out = _log(clock, total=100, interval=0)
    clock.now += 2
    bar.update(10)
    bar.total = 20
    bar.refresh()
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == ["10/100 it (10%) 5 it/s, eta 18s", "10/20 it (50%) 5 it/s, eta 2s"]

    clock = FakeClock()
    bar, out = _log(clock, iterable=iter("abc"), desc="walk", interval=60)
    clock.now += 3
    assert list(bar) == ["a", "b", "c"]
    assert out.getvalue().splitlines() == ["walk: 3 it 1 it/s, in 3s"]  # one line, on close


def test_nothing_done_prints_nothing() -> None:
    bar, out = _log(FakeClock(), total=10, interval=0)
    bar.close()
    bar.close()
    assert out.getvalue() == ""


def test_disabled_prints_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with progress(total=3, desc="train", enabled=False, interval=0) as bar:
        assert isinstance(bar, LogProgress)
        bar.update(3)
        bar.set_postfix(loss=1.0)
    assert list(progress([1, 2], enabled=False, interval=0)) == [1, 2]
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


def test_a_log_gets_plain_lines_and_a_terminal_gets_tqdm(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    bar = progress([1, 2, 3], desc="check", unit="img", interval=0)
    assert isinstance(bar, LogProgress)
    assert list(bar) == [1, 2, 3]
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("check: 3/3 img (100%)") and "\r" not in err

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress(total=3, desc="train", dynamic_ncols=True)
    assert isinstance(bar, tqdm)
    bar.close()


def test_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETKIT_LOG_EVERY", "2.5")
    assert LogProgress(total=1).interval == 2.5
    monkeypatch.setenv("DETKIT_LOG_EVERY", "often")
    assert LogProgress(total=1).interval == progress_module.DEFAULT_INTERVAL
    monkeypatch.delenv("DETKIT_LOG_EVERY")
    assert LogProgress(total=1).interval == 10


def test_write_goes_to_stdout_or_the_given_file(capsys: pytest.CaptureFixture[str]) -> None:
    write("one")
    LogProgress.write("two")
    write("three", file=sys.stderr)
    captured = capsys.readouterr()
    assert captured.out == "one\ntwo\n" and captured.err == "three\n"


@pytest.mark.parametrize(("seconds", "shown"), [(0.4, "0s"), (45, "45s"), (612, "10m12s"), (7500, "2h05m")])
def test_format_seconds(seconds: float, shown: str) -> None:
    assert format_seconds(seconds) == shown
