"""An exponential moving average of a model's weights (``train.ema``).

After each optimizer step, every floating-point tensor of the state dict moves
towards the model's::

    ema = d * ema + (1 - d) * weight,    d = decay * (1 - exp(-updates / tau))

The ramp on ``d`` lets the average follow the fast early changes instead of being
anchored to the random initialization (as in YOLOv5 and timm); integer buffers (batch
counts) are copied. The averaged model is the one evaluated and saved.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from detkit.errors import ConfigError


class ModelEMA:
    """The moving average of ``model``'s weights.

    Args:
        model: the model being trained (not a DDP wrapper).
        decay: the decay once the ramp is over, in ``(0, 1)``.
        tau: the ramp's time constant, in optimizer steps (0: no ramp).
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9998, tau: float = 2000.0) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.tau = float(tau)
        self.updates = 0

    @classmethod
    def from_config(cls, model: nn.Module, value: Any) -> ModelEMA | None:
        """``train.ema``: null/false (off), true (defaults) or ``{decay: 0.9998, tau: 2000}``.

        Raises:
            ConfigError: a value of the wrong type or range.
        """
        if value in (None, False):
            return None
        settings: Mapping[str, Any] = {} if value is True else value
        if not isinstance(settings, Mapping) or set(settings) - {"decay", "tau"}:
            raise ConfigError(f"train.ema must be null, true or {{decay: 0.9998, tau: 2000}}, got {value!r}")
        decay, tau = settings.get("decay", 0.9998), settings.get("tau", 2000.0)
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0.0 < decay < 1.0:
            raise ConfigError(f"train.ema.decay must be a number in (0, 1), got {decay!r}")
        if isinstance(tau, bool) or not isinstance(tau, int | float) or tau < 0:
            raise ConfigError(f"train.ema.tau must be a number >= 0, got {tau!r}")
        return cls(model, decay=float(decay), tau=float(tau))

    def current_decay(self) -> float:
        """The decay of the next update."""
        ramp = 1.0 - math.exp(-self.updates / self.tau) if self.tau > 0 else 1.0
        return self.decay * ramp

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s weights."""
        self.updates += 1
        d = self.current_decay()
        averaged, copied, sources, copy_sources = [], [], [], []
        model_state = model.state_dict()
        for name, value in self.module.state_dict().items():
            source = model_state[name].detach()
            if value.dtype.is_floating_point:
                averaged.append(value)
                sources.append(source)
            else:
                copied.append(value)
                copy_sources.append(source)
        if averaged:
            torch._foreach_mul_(averaged, d)
            torch._foreach_add_(averaged, sources, alpha=1.0 - d)
        for value, source in zip(copied, copy_sources, strict=True):
            value.copy_(source)

    def state_dict(self) -> dict[str, Any]:
        """The average's weights and the update count (for resuming)."""
        return {"updates": self.updates, "decay": self.decay, "tau": self.tau, "model": self.module.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["model"])


__all__ = ["ModelEMA"]
