"""The training loop: optimizer, schedule, precision, logging, evaluation and checkpoints.

:class:`Trainer` runs ``max_iters`` optimizer steps, or ``epochs * len(loader) // accumulate``
when ``max_iters`` is not set, of::

    for each of `accumulate` batches:
        with autocast(precision): losses = model(images, targets)[1]
        (sum(losses.values()) / accumulate).backward()        # scaled under fp16
    clip_grad_norm_(...); optimizer.step(); scheduler.step(); ema.update(model)

and writes into ``out_dir`` (rank 0 only, in a distributed run):

* ``config.yaml``   the resolved config it was given;
* ``metrics.jsonl`` one ``{"type": "train", ...}`` record per ``log_period``
  iterations (iteration, epoch, lr, the mean of each loss term and of the total
  over the finite steps of the period and over the ranks, resident memory, wall seconds) and one
  ``{"type": "eval", ...}`` record per evaluation; appended and flushed as it goes;
* ``loss_curve.png`` redrawn after each evaluation and at the end;
* ``last.pt`` every ``checkpoint_period`` iterations, after each evaluation, at the
  end and on Ctrl-C, with the training state that lets ``detkit train --resume``
  continue the run exactly (see :mod:`detkit.engine.resume`); ``iter_NNNNNNN.pt``
  copies of the last ``keep_checkpoints`` periodic ones; ``best.pt`` (weights only)
  whenever ``metrics["bbox"]["AP"]`` improves (see :mod:`detkit.engine.checkpoint`);
* ``metrics.json``  the last evaluation's metrics, exactly as the callback returned them.

With ``train.ema`` the moving average of the weights (:mod:`detkit.engine.ema`) is
what is evaluated and what the checkpoints' ``model`` holds.

Evaluation runs every ``eval_period`` epochs and once more at the end (when
training stops on ``max_iters`` or the ``max_minutes`` time budget too), unless
the last epoch's evaluation already covered the final weights. Before it, a
model with a ``finish_training(batches, device=..., progress=...)`` method gets
one call with the training loader (R-CNN fits its SVMs and box regressors
there); a summary it returns is logged as a ``finish_training`` record.

A step whose loss or gradient norm is not finite is skipped (no weight update,
no schedule step) with a warning; :attr:`Trainer.max_bad_steps` of them in a row
abort the run with a :class:`~detkit.errors.DetkitError`. Under fp16 the grad
scaler skips overflowing steps itself, as part of finding its scale.

In a distributed run (:mod:`detkit.engine.distributed`) the model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`; every decision that must agree
across ranks (skipping a step, stopping on the time budget, the metrics) is taken
together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from detkit.config import DEFAULTS, save_config
from detkit.data.loader import TrainBatchSampler
from detkit.device import PRECISIONS, autocast, check_precision, resolve_device
from detkit.engine import distributed as dist
from detkit.engine.checkpoint import load_state, save_checkpoint
from detkit.engine.ema import ModelEMA
from detkit.engine.optim import (
    ParamRule,
    build_optimizer,
    build_scheduler,
    freeze_norm_statistics,
    freeze_parameters,
)
from detkit.engine.resume import LAST, load_train_state, rng_state, set_rng_state, to_cpu, truncate_log
from detkit.engine.threads import ThreadTuner, candidate_counts
from detkit.errors import ConfigError, DetkitError
from detkit.io import atomic_path, atomic_write
from detkit.progress import progress as progress_bar
from detkit.structures import Targets
from detkit.viz.plots import plot_loss_curve

logger = logging.getLogger(__name__)

#: ``evaluate(model) -> {"bbox": {"AP": ..., ...}, ...}``; called in eval mode under no_grad.
EvaluateFn = Callable[[nn.Module], Mapping[str, Any]]


class TrainBatch(Protocol):
    """What the training loader yields (:class:`detkit.data.loader.Batch`).

    Attributes:
        images: N tensors ``(3, H, W)`` float in ``[0, 1]`` (N may be 0: skipped).
        targets: N :class:`Targets` in the pixels of the images.
    """

    images: list[Tensor]
    targets: list[Targets]


# ----------------------------------------------------------------------------- settings


def _bad(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"train.{key} must be {expected}, got {value!r}")


def _opt_int(train: Mapping[str, Any], key: str, *, minimum: int) -> int | None:
    value = train[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(key, f"an integer >= {minimum} or null", value)
    return value


def _list(train: Mapping[str, Any], key: str) -> list[Any]:
    value = train.get(key) or []
    if not isinstance(value, list | tuple):
        raise ConfigError(f"train.{key} must be a list, got {value!r}")
    return list(value)


def _req_int(train: Mapping[str, Any], key: str, *, minimum: int) -> int:
    value = _opt_int(train, key, minimum=minimum)
    if value is None:
        raise _bad(key, f"an integer >= {minimum}", value)
    return value


def _opt_float(train: Mapping[str, Any], key: str, *, positive: bool = False) -> float | None:
    value = train[key]
    if value is None:
        return None
    expected = f"a number {'> 0' if positive else '>= 0'}"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(key, expected, value)
    if value < 0 or (positive and value == 0):
        raise _bad(key, expected, value)
    return float(value)


def _choice(train: Mapping[str, Any], key: str, choices: Sequence[str]) -> str:
    value = train[key]
    if value not in choices:
        raise _bad(key, "one of " + ", ".join(choices), value)
    return str(value)


def _flag(train: Mapping[str, Any], key: str) -> bool:
    value = train[key]
    if not isinstance(value, bool):
        raise _bad(key, "true or false", value)
    return value


def _req_float(train: Mapping[str, Any], key: str, *, positive: bool = False) -> float:
    value = _opt_float(train, key, positive=positive)
    if value is None:
        raise _bad(key, f"a number {'> 0' if positive else '>= 0'}", value)
    return value


def _threads(train: Mapping[str, Any]) -> int | str | None:
    value = train.get("threads")
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad("threads", "an integer >= 1, auto or null", value)
    return value


@dataclass(frozen=True)
class TrainSettings:
    """The ``train`` section keys the loop reads, checked (see :data:`detkit.config.DEFAULTS`)."""

    device: str
    epochs: int
    max_iters: int | None
    max_minutes: float | None
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    steps: tuple[float, ...]
    gamma: float
    warmup_iters: int
    warmup_factor: float
    clip_grad_norm: float | None
    eval_period: int
    log_period: int
    freeze: tuple[str, ...] = ()
    param_groups: tuple[ParamRule, ...] = ()
    freeze_norm_stats: bool = False
    precision: str = "fp32"
    accumulate: int = 1
    checkpoint_period: int = 0
    keep_checkpoints: int = 0
    sync_bn: bool = False
    find_unused_parameters: bool = False
    #: torch CPU threads: a number, ``"auto"`` (:mod:`detkit.engine.threads`) or None (torch's default)
    threads: int | str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainSettings:
        """Read ``config["train"]`` (missing keys take their defaults).

        Raises:
            ConfigError: a value of the wrong type or range, naming its ``train.*`` key.
        """
        train = {**DEFAULTS["train"], **(config.get("train") or {})}
        steps = train["steps"] or []
        if not isinstance(steps, list | tuple):
            raise ConfigError(f"train.steps must be a list of numbers, got {steps!r}")
        device = train["device"]
        if not isinstance(device, str):
            raise ConfigError(
                f"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
            )
        clip = _opt_float(train, "clip_grad_norm")
        return cls(
            device=device,
            epochs=_req_int(train, "epochs", minimum=1),
            max_iters=_opt_int(train, "max_iters", minimum=1),
            max_minutes=_opt_float(train, "max_minutes", positive=True),
            optimizer=str(train["optimizer"]),
            lr=_req_float(train, "lr", positive=True),
            momentum=_req_float(train, "momentum"),
            weight_decay=_req_float(train, "weight_decay"),
            schedule=str(train["schedule"]),
            steps=tuple(steps),
            gamma=_req_float(train, "gamma", positive=True),
            warmup_iters=_req_int(train, "warmup_iters", minimum=0),
            warmup_factor=_req_float(train, "warmup_factor", positive=True),
            clip_grad_norm=clip if clip else None,  # 0 or null: no clipping
            eval_period=_opt_int(train, "eval_period", minimum=0)
            or 0,  # 0 or null: at the end only
            log_period=_req_int(train, "log_period", minimum=1),
            freeze=tuple(str(p) for p in _list(train, "freeze")),
            param_groups=tuple(ParamRule.parse(e, i) for i, e in enumerate(_list(train, "param_groups"))),
            freeze_norm_stats=bool(train["freeze_norm_stats"]),
            precision=_choice(train, "precision", PRECISIONS),
            accumulate=_req_int(train, "accumulate", minimum=1),
            checkpoint_period=_opt_int(train, "checkpoint_period", minimum=0) or 0,
            keep_checkpoints=_req_int(train, "keep_checkpoints", minimum=0),
            sync_bn=_flag(train, "sync_bn"),
            find_unused_parameters=_flag(train, "find_unused_parameters"),
            threads=_threads(train),
        )


@dataclass(frozen=True)
class TrainResult:
    """What a run ended with.

    Attributes:
        final_metrics: the final evaluation's metrics (as the callback returned them).
        best_ap: the best ``metrics["bbox"]["AP"]`` seen, or None when none was readable.
        iterations: optimizer steps run (skipped non-finite steps included).
        seconds: wall time of the whole run, evaluations included.
        stopped_early: True when the ``max_minutes`` budget ended the run.
        out_dir: where the outputs are.
        resumed_from: the iteration the run continued from (0: a new run).
    """

    final_metrics: dict[str, Any]
    best_ap: float | None
    iterations: int
    seconds: float
    stopped_early: bool
    out_dir: Path
    resumed_from: int = 0


def memory_mb(device: torch.device) -> dict[str, float]:
    """``rss_mb``: this process's resident memory now; on CUDA ``cuda_max_mb``: the peak allocated."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            out["rss_mb"] = round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):  # not Linux
        pass
    if device.type == "cuda":
        out["cuda_max_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays, tensors
        return value.tolist()
    raise TypeError(f"cannot write a {type(value).__name__} to JSON")


def _read_ap(metrics: Mapping[str, Any]) -> float | None:
    bbox = metrics.get("bbox")
    ap = bbox.get("AP") if isinstance(bbox, Mapping) else None
    try:
        value = float(ap)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@dataclass
class _Window:
    """Loss sums over the current logging period."""

    sums: dict[str, float] = field(default_factory=dict)
    finite_steps: int = 0
    bad_steps: int = 0

    def add(self, losses: Mapping[str, float]) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.finite_steps += 1

    def means(self) -> dict[str, float]:
        return {k: v / self.finite_steps for k, v in self.sums.items()} if self.finite_steps else {}

    def __len__(self) -> int:
        return self.finite_steps + self.bad_steps


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Train a detector on a loader, evaluating and checkpointing as it goes.

    The model is called as ``detections, losses = model(images, targets)``, with
    ``images: list[Tensor(3, H, W)]`` in ``[0, 1]`` and ``targets: list[Targets]``
    on the model's device; in training mode ``losses`` holds scalar losses (their
    sum is minimized).

    Args:
        model: the detector; moved to ``device`` (default: ``train.device``).
        train_loader: an iterable of :class:`TrainBatch` (a DataLoader); its
            length sets the iterations per epoch (``train.max_iters`` is required
            when it has none). Batches without images are skipped. A loader drawing
            from a :class:`~detkit.data.loader.TrainBatchSampler` resumes mid-epoch
            without reading the batches already seen.
        evaluate: ``evaluate(model) -> metrics`` (``{"bbox": {"AP": ...}, ...}``),
            called in eval mode under ``torch.no_grad()`` on every rank; rank 0's
            metrics count.
        out_dir: where outputs go (created).
        config: the resolved config; its ``train`` section sets the loop (see
            :class:`TrainSettings`) and the whole of it goes into checkpoints.
        class_names: label index -> name, stored in checkpoints.
        checkpoint_meta: plain values stored in every checkpoint's ``meta`` (e.g. the
            ``components`` map of which plugin provided each component).
        resume_from: a ``last.pt`` to continue from (same config), or None.
        device: this process's device (a distributed run's rank picks its own GPU).
        progress: show a progress bar (rank 0 only).
        max_bad_steps: non-finite steps in a row that abort the run.
        clock: seconds counter for the ``max_minutes`` budget and timings.
    """

    #: iterations measured before the time budget reshapes the schedule
    MIN_ITERS_FOR_PACE = 20

    def __init__(
        self,
        *,
        model: nn.Module,
        train_loader: Iterable[Any],
        evaluate: EvaluateFn,
        out_dir: str | os.PathLike[str],
        config: Mapping[str, Any],
        class_names: Sequence[str],
        checkpoint_meta: Mapping[str, Any] | None = None,
        resume_from: str | os.PathLike[str] | None = None,
        device: torch.device | None = None,
        progress: bool = True,
        max_bad_steps: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = TrainSettings.from_config(config)
        s = self.settings
        self.dist = dist.current()
        self.device = device if device is not None else resolve_device(s.device)
        self.precision = check_precision(s.precision, self.device)
        self.model = self._prepared(model).to(self.device)
        self.train_loader = train_loader
        self.evaluate_fn = evaluate
        self.out_dir = Path(out_dir)
        self.config = dict(config)
        self.class_names = list(class_names)
        self.checkpoint_meta = dict(checkpoint_meta or {})
        self.progress = progress and self.dist.main
        self.max_bad_steps = max_bad_steps
        self.clock = clock

        self.steps_per_epoch = self._steps_per_epoch()
        self.total_iters = self._total_iters()
        #: where the lr schedule ends: total_iters, or less when a time budget allows less
        self.horizon = self.total_iters
        self.frozen = freeze_parameters(self.model, s.freeze)
        self.optimizer = build_optimizer(
            self.model, name=s.optimizer, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
            rules=s.param_groups,
        )
        self.scheduler = build_scheduler(
            self.optimizer,
            schedule=s.schedule,
            total_iters=lambda: self.horizon,
            warmup_iters=s.warmup_iters,
            warmup_factor=s.warmup_factor,
            steps=s.steps,
            gamma=s.gamma,
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.ema = ModelEMA.from_config(self.model, (config.get("train") or {}).get("ema"))
        self.forward_model: nn.Module = self._wrapped()
        self._threads_before = torch.get_num_threads()
        self.thread_tuner = self._thread_tuner()

        self.iteration = 0
        self.epoch = 1
        self.batches_done = 0  # batches of the current epoch already trained on
        self.best_ap: float | None = None
        self.last_metrics: dict[str, Any] = {}
        self._last_eval_iteration: int | None = None
        self._bad_in_a_row = 0
        self._window = _Window()
        self._start = 0.0
        self._elapsed_before = 0.0  # seconds of the run before it was resumed
        self._last_loss = math.nan
        self._log_file: IO[str] | None = None
        self.resumed_from = 0
        if resume_from is not None:
            self._restore(resume_from)

    # ------------------------------------------------------------------ setup

    def _prepared(self, model: nn.Module) -> nn.Module:
        """``model``, with SyncBatchNorm layers when ``train.sync_bn`` in a distributed GPU run."""
        if not self.settings.sync_bn or not self.dist.distributed:
            return model
        if self.device.type != "cuda":
            raise ConfigError(
                "train.sync_bn=true needs GPUs (PyTorch's SyncBatchNorm runs on CUDA only); on the CPU "
                "use a backbone norm that does not depend on the batch (model.backbone.norm=frozen_bn or gn)"
            )
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def _wrapped(self) -> nn.Module:
        """The module the training step calls: DDP around the model in a distributed run."""
        if not self.dist.distributed:
            return self.model
        return DistributedDataParallel(
            self.model,
            device_ids=[self.device] if self.device.type == "cuda" else None,
            find_unused_parameters=self.settings.find_unused_parameters,
        )

    def _thread_tuner(self) -> ThreadTuner | None:
        """With ``train.threads: auto`` in a one-process CPU run, the tuner of the thread count.

        A choice by timing makes float rounding depend on the machine's load, so under
        ``train.deterministic`` (and in distributed runs) ``auto`` keeps torch's default.
        """
        deterministic = bool((self.config.get("train") or {}).get("deterministic"))
        if self.settings.threads != "auto" or self.device.type != "cpu" or self.dist.distributed or deterministic:
            return None
        tuner = ThreadTuner(candidate_counts(self._threads_before))
        return tuner if tuner.active else None

    @property
    def sampler(self) -> TrainBatchSampler | None:
        """The loader's batch sampler when it can resume mid-epoch."""
        sampler = getattr(self.train_loader, "batch_sampler", None)
        return sampler if isinstance(sampler, TrainBatchSampler) else None

    # ------------------------------------------------------------------ public

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    @property
    def eval_model(self) -> nn.Module:
        """The model evaluated and saved: the moving average with ``train.ema``, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def train(self) -> TrainResult:
        """Run the whole schedule (or until the time budget) and return the result.

        Raises:
            DetkitError: the loss diverged (too many non-finite steps in a row), or
                the model returned no losses in training mode.
            KeyboardInterrupt: re-raised after ``last.pt`` was saved.
        """
        main = self.dist.main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.out_dir / "config.yaml")
        self._start = self.clock() - self._elapsed_before
        with self._open_log() as log_file:
            self._log_file = log_file
            try:
                stopped_early = self._run_epochs()
                self._log_train()
                finished = self._finish_training()
                if finished or self._last_eval_iteration != self.iteration:
                    self._evaluate()  # the final evaluation
            except KeyboardInterrupt:
                if main:
                    logger.warning(
                        "interrupted at iteration %d: saving %s (continue with detkit train --resume %s)",
                        self.iteration, self.out_dir / LAST, self.out_dir,
                    )
                self._save_last()
                raise
            finally:
                self._log_file = None
                if self.thread_tuner is not None:
                    torch.set_num_threads(self._threads_before)
        if main:
            self._write_final_outputs()
        return TrainResult(
            final_metrics=self.last_metrics,
            best_ap=self.best_ap,
            iterations=self.iteration,
            seconds=self.clock() - self._start,
            stopped_early=stopped_early,
            out_dir=self.out_dir,
            resumed_from=self.resumed_from,
        )

    def _open_log(self) -> contextlib.AbstractContextManager[IO[str] | None]:
        """``metrics.jsonl`` for appending (rank 0; a new run starts it empty)."""
        if not self.dist.main:
            return contextlib.nullcontext()
        return open(self.metrics_path, "a" if self.resumed_from else "w", encoding="utf-8")

    # ------------------------------------------------------------------ loop

    def _steps_per_epoch(self) -> int | None:
        try:
            batches = len(self.train_loader)  # type: ignore[arg-type]
        except TypeError:
            return None
        if batches == 0:
            raise DetkitError(
                "the training set is empty: check data.train (paths, annotation file, filters)"
            )
        steps = batches // self.settings.accumulate
        if steps == 0:
            raise ConfigError(
                f"train.accumulate={self.settings.accumulate} is more than the {batches} batches of an epoch; "
                "lower it or train.batch_size"
            )
        return steps

    def _total_iters(self) -> int:
        s = self.settings
        if s.max_iters is not None:
            return s.max_iters
        if self.steps_per_epoch is None:
            raise ConfigError("the training loader has no length: set train.max_iters")
        return s.epochs * self.steps_per_epoch

    def _epoch_batches(self) -> Iterator[Any]:
        """The batches of the current epoch not trained on yet."""
        sampler = self.sampler
        if sampler is not None:
            sampler.set_epoch(self.epoch, start=self.batches_done)
            yield from self.train_loader
            return
        batches = iter(self.train_loader)
        for _ in range(self.batches_done):  # a plain iterable: read past what was seen
            next(batches, None)
        yield from batches

    def _steps(self) -> Iterator[tuple[list[Any], int]]:
        """The current epoch's groups of ``accumulate`` batches, each with the batches read for it.

        Batches without images are skipped with a warning; the last partial group is
        dropped. Every batch read counts in :attr:`batches_done`, so a checkpoint taken
        between two steps knows where the epoch stands.
        """
        group: list[Any] = []
        reads = 0
        for batch in self._epoch_batches():
            self.batches_done += 1
            reads += 1
            if not batch.images:
                logger.warning("iteration %d: a batch without readable images; skipped", self.iteration + 1)
                continue
            group.append(batch)
            if len(group) == self.settings.accumulate:
                yield group, reads
                group, reads = [], 0

    def _more_epochs(self) -> bool:
        """Whether another epoch runs: until ``max_iters`` when it is set, else for ``epochs`` epochs."""
        if self.iteration >= self.total_iters:
            return False
        return self.settings.max_iters is not None or self.epoch <= self.settings.epochs

    def _run_epochs(self) -> bool:
        """All epochs with their evaluations; True when the time budget stopped the run."""
        s = self.settings
        with progress_bar(
            total=self.total_iters, desc="train", unit="it", enabled=self.progress, dynamic_ncols=True
        ) as bar:
            bar.update(self.iteration)
            while self._more_epochs():
                for group, reads in self._steps():
                    try:
                        self._timed_step(group)
                    except KeyboardInterrupt:  # last.pt then continues with this step
                        self.batches_done -= reads
                        raise
                    bar.update(1)
                    postfix = {"loss": f"{self._last_loss:.4g}", "lr": f"{self._lr():.3g}"}
                    if self.thread_tuner is not None:
                        postfix["threads"] = str(self.thread_tuner.threads)
                    bar.set_postfix(postfix, refresh=False)
                    if self.iteration % s.log_period == 0:
                        self._log_train()
                    out_of_time = self._update_horizon()
                    if bar.total != self.horizon:  # the time budget reshaped the run
                        bar.total = self.horizon
                        bar.refresh()
                    if self.iteration >= self.total_iters:
                        return False
                    if out_of_time:
                        if self.dist.main:
                            logger.warning(
                                "train.max_minutes=%s: stopping at iteration %d of %d "
                                "(the lr schedule was fitted to the time budget)",
                                s.max_minutes, self.iteration, self.total_iters,
                            )
                        return True
                    if s.checkpoint_period and self.iteration % s.checkpoint_period == 0:
                        self._save_periodic()
                if self.steps_per_epoch is None:  # an endless iterable ran dry
                    break
                self._maybe_evaluate(self.epoch)
                self.epoch += 1
                self.batches_done = 0
        return False

    def _timed_step(self, group: Sequence[TrainBatch]) -> None:
        """:meth:`_train_step`, run and timed for ``train.threads: auto``."""
        tuner = self.thread_tuner
        if tuner is None:
            self._train_step(group)
            return
        tuner.before_step()
        start = self.clock()
        self._train_step(group)
        tuner.after_step(self.clock() - start)

    def _train_step(self, group: Sequence[TrainBatch]) -> None:
        """One optimizer step on ``accumulate`` batches (skipped when the loss or gradients are not finite)."""
        self.iteration += 1
        try:
            self._step(group)
        except KeyboardInterrupt:  # the step did not complete
            self.iteration -= 1
            raise

    def _step(self, group: Sequence[TrainBatch]) -> None:
        self._train_mode()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        total_loss = 0.0
        for i, batch in enumerate(group):
            sync = i == len(group) - 1
            losses = self._forward_backward(batch, sync=sync, scale=1.0 / len(group))
            if losses is None:  # not finite on some rank: every rank skips this step
                self.optimizer.zero_grad(set_to_none=True)
                return
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v / len(group)
            total_loss += losses["loss"] / len(group)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.settings.clip_grad_norm if self.settings.clip_grad_norm is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not torch.isfinite(grad_norm):
            if self.scaler is not None:  # an fp16 overflow: the scaler skips the step and lowers its scale
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self._window.add(sums)
                return
            self.optimizer.zero_grad(set_to_none=True)
            self._skip_step("gradient norm", {"grad_norm": float(grad_norm)})
            return
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self._bad_in_a_row = 0
        self._last_loss = total_loss
        self._window.add(sums)

    def _forward_backward(self, batch: TrainBatch, *, sync: bool, scale: float) -> dict[str, float] | None:
        """Losses of one batch, and their gradients added to the parameters'; None when a rank's loss is not finite."""
        images = [img.to(self.device, non_blocking=True) for img in batch.images]
        targets = [t.to(self.device) for t in batch.targets]
        no_sync = getattr(self.forward_model, "no_sync", None)
        skip_sync = not sync and callable(no_sync)
        with no_sync() if skip_sync else contextlib.nullcontext():  # type: ignore[misc]
            with autocast(self.device, self.precision):
                _, losses = self.forward_model(images, targets)
            if not losses:
                raise DetkitError(
                    f"{type(self.model).__name__} returned no losses in training mode; "
                    "check that the model's heads are built for training"
                )
            total = torch.stack([v.reshape(()).float() for v in losses.values()]).sum()
            values = {k: float(v.detach()) for k, v in losses.items()}
            values["loss"] = float(total.detach())
            if not dist.all_ranks_true(math.isfinite(values["loss"]), self.device):
                self._skip_step("loss", values)
                return None
            scaled = total * scale
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return values

    def _skip_step(self, what: str, values: Mapping[str, float]) -> None:
        self._bad_in_a_row += 1
        self._window.bad_steps += 1
        detail = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        logger.warning(
            "iteration %d: non-finite %s (%s); step skipped (%d in a row)",
            self.iteration,
            what,
            detail,
            self._bad_in_a_row,
        )
        if self._bad_in_a_row >= self.max_bad_steps:
            raise DetkitError(
                f"training diverged: {self._bad_in_a_row} steps in a row with a non-finite {what} "
                f"(last at iteration {self.iteration}, lr {self._lr():.3g}; {detail}); "
                f"lower train.lr (now {self.settings.lr}) or raise train.warmup_iters "
                f"(now {self.settings.warmup_iters})"
            )

    def _update_horizon(self) -> bool:
        """Fit the schedule into ``train.max_minutes``; True when the budget is spent.

        The decay (cosine or steps) then completes within the budget instead of being
        cut off at a high learning rate. Evaluations count against the budget too.
        In a distributed run rank 0's clock decides for every rank.
        """
        budget = self.settings.max_minutes
        if budget is None:
            return False
        elapsed = max(self.clock() - self._start, 1e-6)
        horizon = self.horizon
        if self.iteration >= self.MIN_ITERS_FOR_PACE:
            affordable = int(self.iteration * budget * 60.0 / elapsed)
            horizon = max(self.iteration + 1, min(self.total_iters, affordable))
        out_of_time = elapsed >= budget * 60.0 or self.iteration >= horizon
        self.horizon, out_of_time = dist.broadcast((horizon, out_of_time))
        return bool(out_of_time)

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ evaluation

    def _maybe_evaluate(self, epoch: int) -> None:
        """Evaluate at the end of every ``eval_period``-th epoch (once per iteration)."""
        period = self.settings.eval_period
        if period and epoch % period == 0 and self._last_eval_iteration != self.iteration:
            self._evaluate()

    def _train_mode(self) -> None:
        """``model.train()``, with the batch norms' statistics kept when ``train.freeze_norm_stats``."""
        self.forward_model.train()
        if self.settings.freeze_norm_stats:
            freeze_norm_statistics(self.model)

    def _evaluate(self) -> None:
        """Run the callback, log the metrics, update checkpoints and the plot."""
        model = self.eval_model
        model.eval()
        try:
            with torch.no_grad():
                metrics = dict(self.evaluate_fn(model))
        finally:
            self._train_mode()
        metrics = dist.broadcast(metrics)
        self.last_metrics = metrics
        self._last_eval_iteration = self.iteration
        self._log(
            {
                "type": "eval",
                "iter": self.iteration,
                "epoch": self.epoch,
                "metrics": metrics,
                "seconds": round(self.clock() - self._start, 3),
            }
        )
        ap = _read_ap(metrics)
        if not self.dist.main:
            pass
        elif ap is None:
            logger.warning(
                "the evaluation returned no finite metrics['bbox']['AP']; best.pt not updated"
            )
        else:
            logger.info("iteration %d: bbox AP %.4f", self.iteration, ap)
        if ap is not None and (self.best_ap is None or ap > self.best_ap):
            self.best_ap = ap
            self._save("best.pt")
        self._save_last()
        if self.dist.main:
            self._plot()

    # ------------------------------------------------------------------ outputs

    def _finish_training(self) -> bool:
        """Call the model's ``finish_training`` (R-CNN fits its SVMs there); True when it fitted something."""
        finish = getattr(self.model, "finish_training", None)
        if not callable(finish):
            return False
        start = self.clock()
        summary = finish(self.train_loader, device=self.device, progress=self.progress)
        if summary is None:
            return False
        record = {"type": "finish_training", "iteration": self.iteration, "seconds": self.clock() - start, **summary}
        logger.info("finish_training took %.1f s", record["seconds"])
        self._log(record)
        return True

    def _log_train(self) -> None:
        """Write the record of the current logging period (if it has steps) and start a new one."""
        window = self._window
        if len(window) == 0:
            return
        record: dict[str, Any] = {
            "type": "train",
            "iter": self.iteration,
            "epoch": self.epoch,
            "lr": self._lr(),
        }
        record.update(dist.mean_over_ranks(window.means(), self.device))
        if window.bad_steps:
            record["nonfinite_steps"] = window.bad_steps
        if self.scaler is not None:
            record["grad_scale"] = float(self.scaler.get_scale())
        record.update(memory_mb(self.device))
        if self.thread_tuner is not None:
            record["threads"] = self.thread_tuner.choice
        record["seconds"] = round(self.clock() - self._start, 3)
        self._log(record)
        self._window = _Window()

    def _log(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` and flush it (rank 0)."""
        if self._log_file is None:
            return
        self._log_file.write(json.dumps(record, default=_json_default) + "\n")
        self._log_file.flush()

    def _meta(self) -> dict[str, Any]:
        return {
            **self.checkpoint_meta,
            "iteration": self.iteration,
            "epoch": self.epoch,
            "metrics": self.last_metrics,
            "ema": self.ema is not None,
            "precision": self.precision,
        }

    def _save(self, name: str, train_state: Mapping[str, Any] | None = None) -> None:
        if not self.dist.main:
            return
        save_checkpoint(
            self.out_dir / name,
            model=self.eval_model,
            config=self.config,
            class_names=self.class_names,
            meta=self._meta(),
            train_state=train_state,
        )

    def _save_last(self) -> None:
        """``last.pt`` with the training state (every rank takes part: the RNG states are gathered)."""
        state = self.train_state()
        self._save(LAST, state)

    def _save_periodic(self) -> None:
        """``last.pt``, and an ``iter_NNNNNNN.pt`` copy when ``train.keep_checkpoints``; older copies removed."""
        self._save_last()
        keep = self.settings.keep_checkpoints
        if not keep or not self.dist.main:
            return
        last = self.out_dir / LAST
        copy = self.out_dir / f"iter_{self.iteration:07d}.pt"
        try:
            if copy.exists():
                copy.unlink()
            os.link(last, copy)
        except OSError:
            with atomic_path(copy) as tmp:  # no hard links here (another file system): a copy
                shutil.copyfile(last, tmp)
        for old in sorted(self.out_dir.glob("iter_*.pt"))[:-keep]:
            old.unlink(missing_ok=True)

    def train_state(self) -> dict[str, Any]:
        """What :meth:`_restore` needs to continue exactly from here (see :mod:`detkit.engine.resume`)."""
        rngs = dist.gather_to_main([rng_state()])
        state: dict[str, Any] = {
            "iteration": self.iteration,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "best_ap": self.best_ap,
            "last_eval_iteration": self._last_eval_iteration,
            "elapsed": self.clock() - self._start,
            "horizon": self.horizon,
            "bad_in_a_row": self._bad_in_a_row,
            "last_loss": self._last_loss,
            "window": {"sums": dict(self._window.sums), "finite_steps": self._window.finite_steps,
                       "bad_steps": self._window.bad_steps},
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "rng": rngs,
            "world_size": self.dist.world_size,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["ema"] = to_cpu(self.ema.state_dict())
            state["model"] = to_cpu(self.model.state_dict())  # the checkpoint's "model" is the average
        return state

    def _restore(self, path: str | os.PathLike[str]) -> None:
        """Continue from ``path`` (a ``last.pt`` of this run)."""
        checkpoint = load_train_state(path)
        state = checkpoint["train_state"]
        weights = state["model"] if "model" in state else checkpoint["model"]
        load_state(self.model, weights, path=path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
            else:  # the run had no EMA so far: start the average from here
                self.ema.module.load_state_dict(self.model.state_dict())
        self.iteration = self.resumed_from = int(state["iteration"])
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self.best_ap = state["best_ap"]
        self._last_eval_iteration = state["last_eval_iteration"]
        self._elapsed_before = float(state["elapsed"])
        if self.settings.max_minutes is not None:  # the schedule fitted to the time budget so far
            self.horizon = min(int(state["horizon"]), self.total_iters)
        self._bad_in_a_row = int(state["bad_in_a_row"])
        self._last_loss = float(state["last_loss"])
        window = state["window"]
        self._window = _Window(dict(window["sums"]), int(window["finite_steps"]), int(window["bad_steps"]))
        self.last_metrics = dict(checkpoint["meta"].get("metrics") or {})
        rngs = state["rng"]
        if len(rngs) != self.dist.world_size:
            logger.warning(
                "%s was written by %d process(es), this run has %d: the data order continues exactly, "
                "random choices inside the model do not", path, len(rngs), self.dist.world_size,
            )
        set_rng_state(rngs[min(self.dist.rank, len(rngs) - 1)])
        if self.dist.main:
            truncate_log(self.metrics_path, self.iteration,
                         evaluated=self._last_eval_iteration == self.iteration)
            logger.info("resuming %s at iteration %d (epoch %d)", path, self.iteration, self.epoch)

    def _plot(self) -> None:
        try:
            plot_loss_curve(self.metrics_path, self.out_dir / "loss_curve.png")
        except (OSError, ValueError, DetkitError) as exc:  # a plot is never worth a run
            logger.warning("could not draw %s: %s", self.out_dir / "loss_curve.png", exc)

    def _write_final_outputs(self) -> None:
        atomic_write(
            self.out_dir / "metrics.json",
            lambda f: json.dump(self.last_metrics, f, indent=2, default=_json_default),
        )


def train(
    *,
    model: nn.Module,
    train_loader: Iterable[Any],
    evaluate: EvaluateFn,
    out_dir: str | os.PathLike[str],
    config: Mapping[str, Any],
    class_names: Sequence[str],
    progress: bool = True,
) -> TrainResult:
    """Build a :class:`Trainer` and run it (see there for the arguments)."""
    return Trainer(
        model=model,
        train_loader=train_loader,
        evaluate=evaluate,
        out_dir=out_dir,
        config=config,
        class_names=class_names,
        progress=progress,
    ).train()
