"""The training loop: optimizer, schedule, logging, evaluation and checkpoints.

:class:`Trainer` runs ``min(epochs * len(loader), max_iters)`` iterations of::

    losses = model(images, targets)[1]; loss = sum(losses.values())
    loss.backward(); clip_grad_norm_(...); optimizer.step(); scheduler.step()

and writes into ``out_dir``:

* ``config.yaml``   the resolved config it was given;
* ``metrics.jsonl`` one ``{"type": "train", ...}`` record per ``log_period``
  iterations (iteration, epoch, lr, the mean of each loss term and of the total
  over the finite steps of the period, wall seconds) and one
  ``{"type": "eval", ...}`` record per evaluation; appended and flushed as it goes;
* ``loss_curve.png`` redrawn after each evaluation and at the end;
* ``last.pt`` after each evaluation, at the end and on Ctrl-C; ``best.pt`` whenever
  ``metrics["bbox"]["AP"]`` improves (see :mod:`detkit.engine.checkpoint`);
* ``metrics.json``  the last evaluation's metrics, exactly as the callback returned them.

Evaluation runs every ``eval_period`` epochs and once more at the end (when
training stops on ``max_iters`` or the ``max_minutes`` time budget too), unless
the last epoch's evaluation already covered the final weights. Before it, a
model with a ``finish_training(batches, device=..., progress=...)`` method gets
one call with the training loader (R-CNN fits its SVMs and box regressors
there); a summary it returns is logged as a ``finish_training`` record.

A step whose loss or gradient norm is not finite is skipped (no weight update,
no schedule step) with a warning; :attr:`Trainer.max_bad_steps` of them in a row
abort the run with a :class:`~detkit.errors.DetkitError`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from detkit.config import DEFAULTS, save_config
from detkit.device import resolve_device
from detkit.engine.checkpoint import save_checkpoint
from detkit.engine.optim import (
    ParamRule,
    build_optimizer,
    build_scheduler,
    freeze_norm_statistics,
    freeze_parameters,
)
from detkit.errors import ConfigError, DetkitError
from detkit.io import atomic_write
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


def _req_float(train: Mapping[str, Any], key: str, *, positive: bool = False) -> float:
    value = _opt_float(train, key, positive=positive)
    if value is None:
        raise _bad(key, f"a number {'> 0' if positive else '>= 0'}", value)
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
        )


@dataclass(frozen=True)
class TrainResult:
    """What a run ended with.

    Attributes:
        final_metrics: the final evaluation's metrics (as the callback returned them).
        best_ap: the best ``metrics["bbox"]["AP"]`` seen, or None when none was readable.
        iterations: iterations run (skipped non-finite steps included).
        seconds: wall time of the whole run, evaluations included.
        stopped_early: True when the ``max_minutes`` budget ended the run.
        out_dir: where the outputs are.
    """

    final_metrics: dict[str, Any]
    best_ap: float | None
    iterations: int
    seconds: float
    stopped_early: bool
    out_dir: Path


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
        model: the detector; moved to ``train.device``.
        train_loader: an iterable of :class:`TrainBatch` (a DataLoader); its
            length sets the iterations per epoch (``train.max_iters`` is required
            when it has none). Batches without images are skipped.
        evaluate: ``evaluate(model) -> metrics`` (``{"bbox": {"AP": ...}, ...}``),
            called in eval mode under ``torch.no_grad()``.
        out_dir: where outputs go (created).
        config: the resolved config; its ``train`` section sets the loop (see
            :class:`TrainSettings`) and the whole of it goes into checkpoints.
        class_names: label index -> name, stored in checkpoints.
        checkpoint_meta: plain values stored in every checkpoint's ``meta`` (e.g. the
            ``components`` map of which plugin provided each component).
        progress: show a tqdm progress bar.
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
        progress: bool = True,
        max_bad_steps: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = TrainSettings.from_config(config)
        self.device = resolve_device(self.settings.device)
        self.model = model.to(self.device)
        self.train_loader = train_loader
        self.evaluate_fn = evaluate
        self.out_dir = Path(out_dir)
        self.config = dict(config)
        self.class_names = list(class_names)
        self.checkpoint_meta = dict(checkpoint_meta or {})
        self.progress = progress
        self.max_bad_steps = max_bad_steps
        self.clock = clock

        self.total_iters = self._total_iters()
        #: where the lr schedule ends: total_iters, or less when a time budget allows less
        self.horizon = self.total_iters
        s = self.settings
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

        self.iteration = 0
        self.epoch = 0
        self.best_ap: float | None = None
        self.last_metrics: dict[str, Any] = {}
        self._last_eval_iteration: int | None = None
        self._bad_in_a_row = 0
        self._window = _Window()
        self._start = 0.0
        self._last_loss = math.nan
        self._log_file: IO[str] | None = None

    # ------------------------------------------------------------------ public

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def train(self) -> TrainResult:
        """Run the whole schedule (or until the time budget) and return the result.

        Raises:
            DetkitError: the loss diverged (too many non-finite steps in a row), or
                the model returned no losses in training mode.
            KeyboardInterrupt: re-raised after ``last.pt`` was saved.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.out_dir / "config.yaml")
        self._start = self.clock()
        with open(self.metrics_path, "w", encoding="utf-8") as log_file:
            self._log_file = log_file
            try:
                stopped_early = self._run_epochs()
                self._log_train()
                finished = self._finish_training()
                if finished or self._last_eval_iteration != self.iteration:
                    self._evaluate()  # the final evaluation
            except KeyboardInterrupt:
                logger.warning(
                    "interrupted at iteration %d: saving %s",
                    self.iteration,
                    self.out_dir / "last.pt",
                )
                self._save("last.pt")
                raise
            finally:
                self._log_file = None
        self._write_final_outputs()
        return TrainResult(
            final_metrics=self.last_metrics,
            best_ap=self.best_ap,
            iterations=self.iteration,
            seconds=self.clock() - self._start,
            stopped_early=stopped_early,
            out_dir=self.out_dir,
        )

    # ------------------------------------------------------------------ loop

    def _total_iters(self) -> int:
        s = self.settings
        try:
            per_epoch: int | None = len(self.train_loader)  # type: ignore[arg-type]
        except TypeError:
            per_epoch = None
        if per_epoch is None:
            if s.max_iters is None:
                raise ConfigError("the training loader has no length: set train.max_iters")
            return s.max_iters
        if per_epoch == 0:
            raise DetkitError(
                "the training set is empty: check data.train (paths, annotation file, filters)"
            )
        total = s.epochs * per_epoch
        return min(total, s.max_iters) if s.max_iters is not None else total

    def _run_epochs(self) -> bool:
        """All epochs with their evaluations; True when the time budget stopped the run."""
        s = self.settings
        with tqdm(
            total=self.total_iters,
            desc="train",
            unit="it",
            disable=not self.progress,
            dynamic_ncols=True,
        ) as bar:
            for epoch in range(1, s.epochs + 1):
                self.epoch = epoch
                for batch in self.train_loader:
                    if not batch.images:
                        logger.warning(
                            "iteration %d: a batch without readable images; skipped",
                            self.iteration + 1,
                        )
                        continue
                    self._train_step(batch)
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{self._last_loss:.4g}", lr=f"{self._lr():.3g}", refresh=False
                    )
                    if self.iteration % s.log_period == 0:
                        self._log_train()
                    self._update_horizon()
                    if bar.total != self.horizon:  # the time budget reshaped the run
                        bar.total = self.horizon
                        bar.refresh()
                    if self.iteration >= self.total_iters:
                        return False
                    if self._out_of_time() or self.iteration >= self.horizon:
                        logger.warning(
                            "train.max_minutes=%s: stopping at iteration %d of %d "
                            "(the lr schedule was fitted to the time budget)",
                            s.max_minutes,
                            self.iteration,
                            self.total_iters,
                        )
                        return True
                self._maybe_evaluate(epoch)
        return False

    def _train_step(self, batch: TrainBatch) -> None:
        """One optimizer step on one batch (skipped when the loss or gradients are not finite)."""
        self._train_mode()
        images = [img.to(self.device, non_blocking=True) for img in batch.images]
        targets = [t.to(self.device) for t in batch.targets]
        _, losses = self.model(images, targets)
        if not losses:
            raise DetkitError(
                f"{type(self.model).__name__} returned no losses in training mode; "
                "check that the model's heads are built for training"
            )
        total = torch.stack([v.reshape(()) for v in losses.values()]).sum()
        self.iteration += 1
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(total):
            self._skip_step("loss", {k: float(v.detach()) for k, v in losses.items()})
            return
        total.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = (
            self.settings.clip_grad_norm if self.settings.clip_grad_norm is not None else math.inf
        )
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self._skip_step("gradient norm", {"grad_norm": float(grad_norm)})
            return
        self.optimizer.step()
        self.scheduler.step()
        self._bad_in_a_row = 0
        values = {k: float(v.detach()) for k, v in losses.items()}
        values["loss"] = float(total.detach())
        self._last_loss = values["loss"]
        self._window.add(values)

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

    def _update_horizon(self) -> None:
        """Fit the schedule into ``train.max_minutes``, from the pace measured so far.

        The decay (cosine or steps) then completes within the budget instead of being
        cut off at a high learning rate. Evaluations count against the budget too.
        """
        budget = self.settings.max_minutes
        if budget is None or self.iteration < self.MIN_ITERS_FOR_PACE:
            return
        elapsed = max(self.clock() - self._start, 1e-6)
        affordable = int(self.iteration * budget * 60.0 / elapsed)
        self.horizon = max(self.iteration + 1, min(self.total_iters, affordable))

    def _out_of_time(self) -> bool:
        budget = self.settings.max_minutes
        return budget is not None and self.clock() - self._start >= budget * 60.0

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ evaluation

    def _maybe_evaluate(self, epoch: int) -> None:
        """Evaluate at the end of every ``eval_period``-th epoch."""
        period = self.settings.eval_period
        if period and epoch % period == 0:
            self._evaluate()

    def _train_mode(self) -> None:
        """``model.train()``, with the batch norms' statistics kept when ``train.freeze_norm_stats``."""
        self.model.train()
        if self.settings.freeze_norm_stats:
            freeze_norm_statistics(self.model)

    def _evaluate(self) -> None:
        """Run the callback, log the metrics, update checkpoints and the plot."""
        self.model.eval()
        try:
            with torch.no_grad():
                metrics = dict(self.evaluate_fn(self.model))
        finally:
            self._train_mode()
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
        if ap is None:
            logger.warning(
                "the evaluation returned no finite metrics['bbox']['AP']; best.pt not updated"
            )
        else:
            logger.info("iteration %d: bbox AP %.4f", self.iteration, ap)
        if ap is not None and (self.best_ap is None or ap > self.best_ap):
            self.best_ap = ap
            self._save("best.pt")
        self._save("last.pt")
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
        if self._log_file is not None:
            self._log_file.write(json.dumps(record, default=_json_default) + "\n")
            self._log_file.flush()
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
        record.update(window.means())
        if window.bad_steps:
            record["nonfinite_steps"] = window.bad_steps
        record["seconds"] = round(self.clock() - self._start, 3)
        self._log(record)
        self._window = _Window()

    def _log(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` and flush it."""
        if self._log_file is None:
            return
        self._log_file.write(json.dumps(record, default=_json_default) + "\n")
        self._log_file.flush()

    def _save(self, name: str) -> None:
        meta = {**self.checkpoint_meta, "iteration": self.iteration, "epoch": self.epoch, "metrics": self.last_metrics}
        save_checkpoint(
            self.out_dir / name,
            model=self.model,
            config=self.config,
            class_names=self.class_names,
            meta=meta,
        )

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
