"""Optimizers and learning-rate schedules for the training loop.

:func:`build_optimizer` splits the parameters into two groups so that weight
decay only shrinks weights that multiply inputs: decaying a bias or the scale and
shift of a normalization layer does not regularize the function the network
computes, it only fights the normalization.

:func:`build_scheduler` returns a :class:`~torch.optim.lr_scheduler.LambdaLR` whose
factor at iteration ``t`` (0-based, one ``scheduler.step()`` per optimizer step) is::

    factor(t) = warmup(t) * decay(t)
    warmup(t) = warmup_factor * (1 - t / warmup_iters) + t / warmup_iters   if t < warmup_iters
              = 1                                                          otherwise
    decay(t)  = gamma ** (number of milestones <= t)         "step"
              = 0.5 * (1 + cos(pi * min(t, total_iters) / total_iters))  "cosine"
              = 1                                                          "constant"

so the learning rate ramps linearly from ``warmup_factor * lr`` to ``lr`` and the
decay runs over the whole ``[0, total_iters]`` range (as in detectron2).

``total_iters`` may be a callable returning the current horizon: a run with a time
budget shortens its horizon to the iterations the budget allows, so the decay
still completes when time runs out (see :class:`detkit.engine.trainer.Trainer`).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from detkit.errors import ConfigError, DetkitError, did_you_mean

OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SCHEDULES: tuple[str, ...] = ("step", "cosine", "constant")

#: Module types whose parameters are normalization scales and shifts.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def _is_norm(module: nn.Module) -> bool:
    # Also catches from-scratch norm layers (detkit.lectures) and frozen variants by name.
    return isinstance(module, _NORM_TYPES) or "Norm" in type(module).__name__


@dataclass(frozen=True)
class ParamRule:
    """A ``train.param_groups`` entry: parameters whose name matches ``match`` (fnmatch) train at ``lr_mult`` x lr.

    Attributes:
        match: a pattern on parameter names, e.g. ``"backbone.*"``.
        lr_mult: learning-rate multiplier of the matched parameters.
        weight_decay_mult: weight-decay multiplier of the matched parameters.
    """

    match: str
    lr_mult: float = 1.0
    weight_decay_mult: float = 1.0

    @classmethod
    def parse(cls, entry: Any, index: int) -> ParamRule:
        """A rule from a config entry ``{match: PATTERN, lr_mult: X, weight_decay_mult: Y}``."""
        where = f"train.param_groups[{index}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("match"), str):
            raise ConfigError(f"{where} must be a mapping like {{match: 'backbone.*', lr_mult: 0.1}}, got {entry!r}")
        unknown = sorted(set(entry) - {"match", "lr_mult", "weight_decay_mult"})
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; it accepts match, lr_mult, weight_decay_mult")
        rule = cls(str(entry["match"]), float(entry.get("lr_mult", 1.0)), float(entry.get("weight_decay_mult", 1.0)))
        if not (rule.lr_mult >= 0 and rule.weight_decay_mult >= 0):
            raise ConfigError(f"{where}: lr_mult and weight_decay_mult must be >= 0, got {dict(entry)}")
        return rule


def param_groups(
    model: nn.Module, *, weight_decay: float, rules: Sequence[ParamRule] = ()
) -> list[dict[str, object]]:
    """Trainable parameters split by weight decay and by ``train.param_groups`` rule.

    Biases and every parameter of a normalization layer get ``weight_decay=0``; all
    other trainable parameters get ``weight_decay`` (times the rule's
    ``weight_decay_mult``). A parameter takes the first rule whose ``match`` its name
    matches, and its group carries the rule's ``lr_mult``. Frozen parameters
    (``requires_grad=False``) are left out; a parameter shared by several modules
    appears once. Empty groups are omitted.

    Returns:
        ``[{"params": [...], "weight_decay": wd, "lr_mult": m}, ...]``, one group per
        (rule or none, decayed or not).

    Raises:
        ConfigError: a rule that matches no trainable parameter (a typo, most likely).
    """
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    used = [False] * len(rules)
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        norm = _is_norm(module)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            index = next((i for i, r in enumerate(rules) if fnmatch.fnmatchcase(full, r.match)), -1)
            if index >= 0:
                used[index] = True
            decayed = not (norm or name == "bias" or name.endswith("_bias"))
            groups.setdefault((index, decayed), []).append(param)
    unused = [r.match for r, was_used in zip(rules, used) if not was_used]
    if unused:
        prefixes = ", ".join(sorted({n.split(".")[0] for n, _ in model.named_parameters()}))
        raise ConfigError(
            f"train.param_groups: {unused[0]!r} matches no trainable parameter; parameter names start with {prefixes}"
        )
    out: list[dict[str, object]] = []
    for (index, decayed), params in sorted(groups.items(), key=lambda item: (item[0][0], not item[0][1])):
        r = rules[index] if index >= 0 else ParamRule("*")
        out.append({
            "params": params,
            "weight_decay": float(weight_decay) * r.weight_decay_mult if decayed else 0.0,
            "lr_mult": r.lr_mult,
        })
    return out


def freeze_parameters(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Stop the gradients of every parameter whose name matches one of ``patterns`` (``train.freeze``).

    Returns the names frozen. A pattern that matches no parameter is a
    :class:`ConfigError` (a typo would otherwise train what it meant to freeze).
    """
    names = [name for name, _ in model.named_parameters()]
    frozen = []
    for pattern in patterns:
        matched = [n for n in names if fnmatch.fnmatchcase(n, str(pattern))]
        if not matched:
            raise ConfigError(
                f"train.freeze: {pattern!r} matches no parameter; parameter names start with "
                f"{', '.join(sorted({n.split('.')[0] for n in names}))} (patterns are fnmatch, e.g. 'backbone.*')"
            )
        frozen += matched
    params = dict(model.named_parameters())
    for name in frozen:
        params[name].requires_grad_(False)
    return sorted(set(frozen))


def freeze_norm_statistics(model: nn.Module) -> None:
    """Put every batch norm of ``model`` in eval mode, so its running statistics stop changing.

    What ``train.freeze_norm_stats`` does.

    Call it after each ``model.train()``; the norms' scale and shift still train unless frozen.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    rules: Sequence[ParamRule] = (),
) -> Optimizer:
    """The optimizer of ``train.optimizer`` over :func:`param_groups` of ``model``.

    Args:
        name: ``"sgd"`` (with ``momentum``) or ``"adamw"`` (``momentum`` is its beta1).
        lr: base learning rate (``train.lr``), > 0; each group gets ``lr * lr_mult``.
        momentum: SGD momentum / AdamW beta1, in ``[0, 1)``.
        weight_decay: decay of weights other than biases and norm parameters, >= 0.
        rules: ``train.param_groups`` (learning-rate and weight-decay multipliers by name).

    Raises:
        ConfigError: unknown name or out-of-range value (naming the ``train.*`` key).
        DetkitError: the model has no trainable parameter.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise ConfigError(
            f"train.optimizer: unknown optimizer {name!r}{did_you_mean(str(name), OPTIMIZERS)}; "
            f"known: {', '.join(OPTIMIZERS)}"
        )
    if not lr > 0:
        raise ConfigError(f"train.lr must be > 0, got {lr!r}")
    if not 0 <= momentum < 1:
        raise ConfigError(f"train.momentum must be in [0, 1), got {momentum!r}")
    if not weight_decay >= 0:
        raise ConfigError(f"train.weight_decay must be >= 0, got {weight_decay!r}")
    groups = param_groups(model, weight_decay=weight_decay, rules=rules)
    for group in groups:
        group["lr"] = lr * float(group.pop("lr_mult"))  # type: ignore[arg-type]
    if not groups:
        raise DetkitError(
            f"{type(model).__name__} has no trainable parameter (all are frozen); "
            "unfreeze some to train"
        )
    if key == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))


def resolve_milestones(steps: Sequence[float], *, total_iters: int) -> list[int]:
    """Iteration numbers of the ``"step"`` decays, sorted.

    A value ``<= 1`` is a fraction of ``total_iters`` (rounded to the nearest
    iteration); a value ``> 1`` is an absolute iteration number.
    """
    milestones = []
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or s < 0:
            raise ConfigError(
                f"train.steps must hold fractions in [0, 1] or iteration numbers > 1, got {s!r}"
            )
        milestones.append(round(s * total_iters) if s <= 1 else int(s))
    return sorted(milestones)


def lr_factor_fn(
    *,
    schedule: str,
    total_iters: int | Callable[[], int],
    warmup_iters: int,
    warmup_factor: float,
    steps: Sequence[float] = (),
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """The multiplier of the base lr at iteration ``t`` (see the module docstring).

    Raises:
        ConfigError: unknown schedule or out-of-range value (naming the ``train.*`` key).
    """
    if schedule not in SCHEDULES:
        raise ConfigError(
            f"train.schedule: unknown schedule {schedule!r}"
            f"{did_you_mean(str(schedule), SCHEDULES)}; known: {', '.join(SCHEDULES)}"
        )
    horizon: Callable[[], int] = total_iters if callable(total_iters) else (lambda: total_iters)  # type: ignore[assignment,return-value]
    if horizon() < 1:
        raise ConfigError(
            f"training would run {horizon()} iterations; raise train.epochs or train.max_iters"
        )
    if warmup_iters < 0:
        raise ConfigError(f"train.warmup_iters must be >= 0, got {warmup_iters!r}")
    if not 0 < warmup_factor <= 1:
        raise ConfigError(f"train.warmup_factor must be in (0, 1], got {warmup_factor!r}")
    if not gamma > 0:
        raise ConfigError(f"train.gamma must be > 0, got {gamma!r}")
    resolve_milestones(steps, total_iters=horizon())  # validate once, early

    def decay(t: int) -> float:
        total = max(horizon(), 1)
        if schedule == "step":
            milestones = resolve_milestones(steps, total_iters=total)
            return float(gamma ** sum(1 for m in milestones if m <= t))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
        return 1.0

    def factor(t: int) -> float:
        if t < warmup_iters:
            alpha = t / warmup_iters
            return (warmup_factor * (1.0 - alpha) + alpha) * decay(t)
        return decay(t)

    return factor


def build_scheduler(
    optimizer: Optimizer,
    *,
    schedule: str,
    total_iters: int | Callable[[], int],
    warmup_iters: int,
    warmup_factor: float,
    steps: Sequence[float] = (),
    gamma: float = 0.1,
) -> LambdaLR:
    """A per-iteration schedule with linear warmup (call ``step()`` after each optimizer step).

    Args:
        schedule: ``"step"``, ``"cosine"`` or ``"constant"`` (``train.schedule``).
        total_iters: iterations of the whole run, >= 1, or a callable giving the
            current horizon.
        warmup_iters: length of the linear warmup, >= 0 (0: none).
        warmup_factor: lr multiplier at iteration 0, in ``(0, 1]``.
        steps: ``"step"`` milestones: fractions of ``total_iters`` (``<= 1``) or
            absolute iteration numbers (``> 1``).
        gamma: ``"step"`` decay multiplier applied at each milestone.

    Returns:
        A :class:`LambdaLR`; at iteration ``t`` every group's lr is
        ``initial_lr * factor(t)`` (see the module docstring).
    """
    factor = lr_factor_fn(
        schedule=schedule,
        total_iters=total_iters,
        warmup_iters=warmup_iters,
        warmup_factor=warmup_factor,
        steps=steps,
        gamma=gamma,
    )
    return LambdaLR(optimizer, lr_lambda=factor)
