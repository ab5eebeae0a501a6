"""First-order optimizers of CS231n lecture 7, written out as ``torch.optim.Optimizer`` subclasses.

Every update below is the textbook rule in torch's formulation, so a run with
equal hyperparameters follows ``torch.optim``'s trajectory to rounding error.
Where torch and the course notes write a rule differently, both forms are given
in the class docstring. Notation: ``p`` a parameter, ``g`` its gradient,
``lr`` the learning rate, ``t`` the 1-based step count.

Weight decay (all classes): the L2 penalty ``wd/2 * ||p||^2`` enters as
``g <- g + wd * p`` before the update, exactly like torch. For Adam this
"coupled" decay is also rescaled by the adaptive denominator, which is why
AdamW *decouples* it: ``p <- p * (1 - lr * wd)`` (``ScratchAdam(decoupled_weight_decay=True)``,
equal to ``torch.optim.AdamW``).

Also here: the registry :data:`OPTIMIZERS` / :func:`build_optimizer`, and
second-order L-BFGS via ``torch.optim.LBFGS`` in :func:`lbfgs_minimize`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from detkit.errors import ConfigError

__all__ = [
    "OPTIMIZERS",
    "AdaGrad",
    "LBFGSResult",
    "Nesterov",
    "RMSProp",
    "SGDMomentum",
    "ScratchAdam",
    "ScratchSGD",
    "build_optimizer",
    "lbfgs_minimize",
]

Params = Iterable[Tensor] | Iterable[dict[str, Any]]


class _ElementwiseOptimizer(Optimizer):
    """Shared ``step``: evaluate the closure, then update each parameter with ``_update``."""

    def _update(self, p: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                g = p.grad
                if group["weight_decay"] != 0 and not group.get("decoupled_weight_decay", False):
                    g = g + group["weight_decay"] * p  # L2 penalty wd/2 ||p||^2 has gradient wd * p
                self._update(p, g, self.state[p], group)
        return loss


def _check(name: str, value: float, low: float = 0.0) -> None:
    if not value >= low:
        raise ValueError(f"invalid {name}: {value} (must be >= {low})")


class ScratchSGD(_ElementwiseOptimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum, as in ``torch.optim.SGD``.

    Plain: ``p <- p - lr * g``.

    Momentum, torch form (used here): ``v <- mu * v + g``; ``p <- p - lr * v``
    (the first step sets ``v = g``, which is the same as starting from ``v = 0``).
    Course-notes form: ``v <- mu * v - lr * g``; ``p <- p + v``. With a constant lr the
    two are the same trajectory (the notes' ``v`` is ``-lr`` times torch's); they
    differ once lr changes, where torch's lr also scales the accumulated velocity.

    Nesterov, torch form: ``v <- mu * v + g``; ``p <- p - lr * (g + mu * v)``.
    Notes' form (Sutskever, rewritten in the look-ahead variable):
    ``v_prev = v``; ``v <- mu * v - lr * g``; ``p <- p - mu * v_prev + (1 + mu) * v``.
    Same trajectory for a constant lr.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        nesterov: bool = False,
    ) -> None:
        _check("lr", lr)
        _check("momentum", momentum)
        _check("weight_decay", weight_decay)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov})

    def _update(self, p: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        mu = group["momentum"]
        if mu != 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.clone()
            else:
                state["momentum_buffer"].mul_(mu).add_(g)  # velocity: a running sum of gradients
            v = state["momentum_buffer"]
            # Nesterov evaluates the step "after" the velocity move: the correction g + mu * v.
            g = g + mu * v if group["nesterov"] else v
        p.add_(g, alpha=-group["lr"])


class SGDMomentum(ScratchSGD):
    """SGD with classical momentum (default ``mu = 0.9``); see :class:`ScratchSGD` for both formulations."""

    def __init__(self, params: Params, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=False)


class Nesterov(ScratchSGD):
    """SGD with Nesterov momentum (default ``mu = 0.9``); see :class:`ScratchSGD` for both formulations."""

    def __init__(self, params: Params, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)


class AdaGrad(_ElementwiseOptimizer):
    """AdaGrad (Duchi et al. 2011), as ``torch.optim.Adagrad``.

    ``cache <- cache + g^2``; ``p <- p - lr_t * g / (sqrt(cache) + eps)`` with
    ``lr_t = lr / (1 + (t - 1) * lr_decay)``. Same as the notes (``lr_decay = 0``).
    Each coordinate's step shrinks with its accumulated squared gradient, so steep
    directions are damped; but the cache only grows, so the steps decay towards 0.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
    ) -> None:
        for name, value in (("lr", lr), ("lr_decay", lr_decay), ("weight_decay", weight_decay), ("eps", eps)):
            _check(name, value)
        _check("initial_accumulator_value", initial_accumulator_value)
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "eps": eps,
        }
        super().__init__(params, defaults)

    def _update(self, p: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        if "sum" not in state:
            state["step"] = 0
            state["sum"] = torch.full_like(p, group["initial_accumulator_value"])
        state["step"] += 1
        lr_t = group["lr"] / (1 + (state["step"] - 1) * group["lr_decay"])
        state["sum"].addcmul_(g, g)
        p.addcdiv_(g, state["sum"].sqrt().add_(group["eps"]), value=-lr_t)


class RMSProp(_ElementwiseOptimizer):
    """RMSProp (Tieleman & Hinton 2012), as ``torch.optim.RMSprop``.

    ``cache <- alpha * cache + (1 - alpha) * g^2``; ``p <- p - lr * g / (sqrt(cache) + eps)``.

    The notes' ``decay_rate`` is torch's ``alpha``. The ``(1 - alpha)`` factor on the
    squared gradient matters: it makes ``cache`` a leaky *average* of ``g^2``, so
    ``sqrt(cache)`` is an RMS gradient of the same scale as ``g``; the variant some
    slides show without it (``cache <- alpha * cache + g^2``) is a leaky *sum*
    about ``1 / (1 - alpha)`` times larger, shrinking every step by ``sqrt(1 - alpha)``
    (10x for ``alpha = 0.99``). ``eps`` is added *outside* the square root, as in the
    notes and torch (TensorFlow adds it inside).

    Options as in torch: ``momentum`` (``b <- mu * b + g / (sqrt(cache) + eps)``;
    ``p <- p - lr * b``) and ``centered`` (divide by an estimate of the gradient's
    std, ``sqrt(cache - mean(g)^2)``, instead of its RMS).
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        *,
        centered: bool = False,
    ) -> None:
        for name, value in (("lr", lr), ("alpha", alpha), ("eps", eps), ("weight_decay", weight_decay)):
            _check(name, value)
        _check("momentum", momentum)
        defaults = {
            "lr": lr,
            "alpha": alpha,
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "centered": centered,
        }
        super().__init__(params, defaults)

    def _update(self, p: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        alpha = group["alpha"]
        if "square_avg" not in state:
            state["step"] = 0
            state["square_avg"] = torch.zeros_like(p)
            if group["momentum"] > 0:
                state["momentum_buffer"] = torch.zeros_like(p)
            if group["centered"]:
                state["grad_avg"] = torch.zeros_like(p)
        state["step"] += 1
        square_avg = state["square_avg"]
        square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)  # leaky average of g^2, note the (1 - alpha)
        if group["centered"]:
            grad_avg = state["grad_avg"]
            grad_avg.mul_(alpha).add_(g, alpha=1 - alpha)
            denom = (square_avg - grad_avg * grad_avg).sqrt_()  # E[g^2] - E[g]^2: the gradient's variance
        else:
            denom = square_avg.sqrt()
        denom.add_(group["eps"])  # eps outside the sqrt, as in torch
        if group["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).addcdiv_(g, denom)
            p.add_(buf, alpha=-group["lr"])
        else:
            p.addcdiv_(g, denom, value=-group["lr"])


class ScratchAdam(_ElementwiseOptimizer):
    """Adam (Kingma & Ba 2015) with bias correction, as ``torch.optim.Adam`` (or ``AdamW``).

    ``m <- b1 * m + (1 - b1) * g``; ``v <- b2 * v + (1 - b2) * g^2``;
    ``m_hat = m / (1 - b1^t)``; ``v_hat = v / (1 - b2^t)``;
    ``p <- p - lr * m_hat / (sqrt(v_hat) + eps)``.

    Why bias correction: ``m`` and ``v`` start at 0, so early on they are
    ``(1 - b^t)`` times too small; ``v`` (``b2 = 0.999``) much more so than ``m``, and
    the uncorrected first steps ``m / sqrt(v)`` are far too large (about
    ``0.1 / sqrt(0.001) ~ 3`` times ``g / |g|`` at ``t = 1``). The "almost Adam" of
    the slides (momentum + RMSProp without the correction) has this flaw. torch
    computes the same rule as ``p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

    ``decoupled_weight_decay=True`` gives AdamW: ``p <- p * (1 - lr * wd)`` instead of ``g + wd * p``.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
    ) -> None:
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            _check(name, value)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}: each must be in [0, 1)")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    def _update(self, p: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        b1, b2 = group["betas"]
        lr = group["lr"]
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        if group["decoupled_weight_decay"] and group["weight_decay"] != 0:
            p.mul_(1 - lr * group["weight_decay"])  # AdamW: shrink the weights, untouched by the adaptive scaling
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(b1).add_(g, alpha=1 - b1)  # first moment (momentum)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)  # second moment (RMSProp)
        bias_correction1 = 1 - b1**t
        bias_correction2 = 1 - b2**t
        denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(group["eps"])
        p.addcdiv_(m, denom, value=-lr / bias_correction1)


#: The lecture's optimizers by name, for configs and :func:`build_optimizer`.
OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": ScratchSGD,
    "momentum": SGDMomentum,
    "nesterov": Nesterov,
    "adagrad": AdaGrad,
    "rmsprop": RMSProp,
    "adam": ScratchAdam,
}


def build_optimizer(name: str, params: Params, **kwargs: Any) -> Optimizer:
    """``OPTIMIZERS[name](params, **kwargs)``; an unknown name is a :class:`ConfigError` listing the known ones."""
    try:
        cls = OPTIMIZERS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown optimizer {name!r}; known optimizers: {', '.join(sorted(OPTIMIZERS))}") from None
    return cls(params, **kwargs)


class LBFGSResult(NamedTuple):
    """Result of :func:`lbfgs_minimize`: the minimiser ``x``, ``fn(x)``, and every loss evaluated."""

    x: Tensor
    value: float
    losses: list[float]


def lbfgs_minimize(
    fn: Callable[[Tensor], Tensor],
    x0: Tensor,
    steps: int = 100,
    *,
    lr: float = 1.0,
    history_size: int = 10,
    line_search: str | None = "strong_wolfe",
    tolerance_grad: float = 1e-10,
    tolerance_change: float = 1e-12,
) -> LBFGSResult:
    """Minimise the scalar ``fn(x)`` from ``x0`` (any shape) with at most ``steps`` L-BFGS iterations.

    L-BFGS builds a low-rank inverse-Hessian estimate from the last ``history_size``
    steps and gradient changes: second-order steps without an ``O(n^2)`` Hessian.
    It wants full-batch, deterministic objectives (hence lecture 7's "if you can
    afford full batch updates, try L-BFGS"). ``x0`` is not modified.
    """
    x = x0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [x],
        lr=lr,
        max_iter=steps,
        history_size=history_size,
        line_search_fn=line_search,
        tolerance_grad=tolerance_grad,
        tolerance_change=tolerance_change,
    )
    losses: list[float] = []

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = fn(x)
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    optimizer.step(closure)  # type: ignore[arg-type]
    with torch.no_grad():
        value = float(fn(x))
    return LBFGSResult(x.detach(), value, losses)
