"""train.threads: auto: the tuner's choices on hand-made step times, and the trainer that uses it."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch

from detkit.engine import threads as threads_module
from detkit.engine.threads import FIRST_TRIAL_AFTER, ThreadTuner, candidate_counts
from detkit.engine.trainer import TrainSettings
from detkit.errors import ConfigError


def run_steps(tuner: ThreadTuner, steps: int, step_seconds: Callable[[int], float]) -> list[int]:
    """Drive ``tuner`` for ``steps`` steps whose time depends on the thread count; the counts used."""
    used = []
    for _ in range(steps):
        tuner.before_step()
        used.append(tuner.threads)
        tuner.after_step(step_seconds(tuner.threads))
    return used


def test_candidate_counts() -> None:
    assert candidate_counts(1) == [1]
    assert candidate_counts(2) == [2, 1]
    assert candidate_counts(16) == [16, 15, 8, 1]


def test_first_trial_times_each_candidate_and_keeps_the_fastest() -> None:
    applied: list[int] = []
    tuner = ThreadTuner([2, 1], period_s=60.0, trial_steps=3, skip=1, set_threads=applied.append)
    times = {2: 0.30, 1: 0.20}  # one busy core: one thread steps faster
    used = run_steps(tuner, FIRST_TRIAL_AFTER + 8 + 5, lambda n: times[n])
    # 10 steps at the start count, then 1 skipped + 3 timed steps per candidate, then the winner
    assert used == [2] * FIRST_TRIAL_AFTER + [2] * 4 + [1] * 4 + [1] * 5
    assert tuner.choice == 1
    assert tuner.last_trial == {2: 0.30, 1: 0.20}
    assert applied == [2, 1]  # torch.set_num_threads only when the count changes


def test_skipped_steps_after_a_switch_do_not_count() -> None:
    tuner = ThreadTuner([2, 1], trial_steps=2, skip=1, set_threads=lambda n: None)
    calls = {2: 0, 1: 0}

    def seconds(n: int) -> float:
        calls[n] += 1
        first_after_switch = n == 1 and calls[1] == 1
        return 5.0 if first_after_switch else {2: 0.30, 1: 0.20}[n]  # a slow first step at 1 thread

    run_steps(tuner, FIRST_TRIAL_AFTER + 6, seconds)
    assert tuner.choice == 1 and tuner.last_trial[1] == 0.20


def test_the_median_ignores_one_slow_step() -> None:
    tuner = ThreadTuner([2, 1], trial_steps=3, skip=0, set_threads=lambda n: None)
    seq = iter([0.1] * FIRST_TRIAL_AFTER + [0.30, 9.0, 0.30] + [0.35, 0.35, 0.35])
    run_steps(tuner, FIRST_TRIAL_AFTER + 6, lambda n: next(seq))
    assert tuner.choice == 2 and tuner.last_trial == {2: 0.30, 1: 0.35}


def test_a_new_trial_follows_the_load_after_the_period() -> None:
    tuner = ThreadTuner([2, 1], period_s=10.0, trial_steps=2, skip=1, set_threads=lambda n: None)
    busy = {2: 0.30, 1: 0.20}
    quiet = {2: 0.125, 1: 0.25}
    run_steps(tuner, FIRST_TRIAL_AFTER + 6, lambda n: busy[n])
    assert tuner.choice == 1
    # the other process ends; 10 s of steps at 1 thread (40 steps of 0.25 s) before the next trial
    used = run_steps(tuner, 40 + 6 + 3, lambda n: quiet[n])
    assert used[:40] == [1] * 40
    assert used[40:46] == [2, 2, 2, 1, 1, 1]
    assert used[46:] == [2, 2, 2] and tuner.choice == 2


def test_one_candidate_changes_nothing() -> None:
    applied: list[int] = []
    tuner = ThreadTuner([1], set_threads=applied.append)
    assert not tuner.active
    run_steps(tuner, 50, lambda n: 0.1)
    assert applied == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("auto", "auto"), (3, 3)],
)
def test_settings_read_threads(value: object, expected: object) -> None:
    assert TrainSettings.from_config({"train": {"threads": value}}).threads == expected


@pytest.mark.parametrize("value", [0, "fast", 1.5, True])
def test_settings_reject_bad_threads(value: object) -> None:
    with pytest.raises(ConfigError, match=r"train\.threads must be an integer >= 1, auto or null"):
        TrainSettings.from_config({"train": {"threads": value}})


TINY = """\
base: detkit:shapes_faster_rcnn.yaml
data:
  train: {{name: shapes, root: "{root}/data", split: train, num_train: 8, num_val: 2, image_size: 64}}
  val: {{name: shapes, root: "{root}/data", split: val, num_train: 8, num_val: 2, image_size: 64}}
model:
  preprocess: {{min_size: 64, max_size: 64}}
train: {{device: cpu, max_iters: 14, max_minutes: null, batch_size: 2, eval_period: 0, log_period: 14,
        warmup_iters: 2, threads: auto}}
eval: {{batch_size: 2, max_images: 2}}
output: {{dir: "{root}/run"}}
"""


def test_cpu_recipes_tune_their_threads() -> None:
    from detkit.config import load_config

    for recipe in ("shapes_faster_rcnn", "shapes_yolo", "bccd_faster_rcnn", "balloon_mask_rcnn"):
        assert load_config(f"detkit:{recipe}.yaml")["train"]["threads"] == "auto"


@pytest.mark.parametrize(
    ("overrides", "tuned"), [([], True), (["train.deterministic=true"], False), (["train.threads=2"], False)]
)
def test_training_with_auto_times_both_counts_and_restores_torchs(
    tmp_path, monkeypatch: pytest.MonkeyPatch, overrides: list[str], tuned: bool
) -> None:
    """A real run on the CPU (as on 2 cores): the trial sets both counts, the log names the choice."""
    from detkit.config import load_config
    from detkit.engine.run import run_training

    before = torch.get_num_threads()
    monkeypatch.setattr(threads_module, "FIRST_TRIAL_AFTER", 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    applied: list[int] = []
    real_set = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (applied.append(n), real_set(n))[1])
    (tmp_path / "tiny.yaml").write_text(TINY.format(root=tmp_path))
    try:
        run_training(load_config(tmp_path / "tiny.yaml", overrides), [], progress=False)
    finally:
        monkeypatch.undo()
    records = map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    train = [r for r in records if r["type"] == "train"]
    if tuned:
        assert train[-1]["threads"] in (1, 2)
        assert applied[:2] == [2, 1], (applied, train)  # the trial: both counts, 1 skipped + 4 timed steps each
        assert applied[-1] == 2  # the count before training, restored at the end
    else:
        assert "threads" not in train[-1]
        assert 1 not in applied
    torch.set_num_threads(before)
