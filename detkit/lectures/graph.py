"""A small computational-graph engine with reverse-mode backprop (CS231n lecture 4).

A :class:`Value` holds a float64 numpy array (a 0-d array for a scalar) and
remembers the operation and inputs that produced it. ``backward()`` walks the
graph in reverse topological order and applies each node's local chain rule:
``input.grad += local_derivative * output.grad``.

numpy, not torch: the engine *is* the autograd here; torch.autograd is the
oracle its tests compare against.

Elementwise operations broadcast like numpy; the backward pass sums a gradient
over the broadcast axes so that ``x.grad`` always has ``x``'s shape.

Gates and their gradients, as in the lecture: add distributes, mul swaps,
max routes. Two points where the lecture leaves the choice open, made here to
match torch: the max gate splits the gradient evenly on an exact tie, and
relu's (sub)gradient at 0 is 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Union

import numpy as np

__all__ = ["Value"]

Operand = Union["Value", float, int, np.ndarray]


def _unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` down to ``shape``: the adjoint of numpy broadcasting.

    A value broadcast to many positions was *used* at all of them, so its
    gradient is the sum over those uses.
    """
    # Leading axes that broadcasting added: (extra..., *shape) -> shape.
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    # Axes of size 1 that were stretched.
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


class Value:
    """A node of the computational graph.

    Args:
        data: a number or array (stored as float64; shape ``S``).
        label: an optional name, for printing.

    Attributes:
        data: ``(S)`` the forward value.
        grad: ``(S)`` d(output)/d(this node) after ``backward()``.
    """

    def __init__(
        self, data: float | np.ndarray, label: str = "", *, _children: Iterable[Value] = (), _op: str = ""
    ) -> None:
        self.data = np.array(data, dtype=np.float64)
        self.grad = np.zeros_like(self.data)
        self.label = label
        self._prev: tuple[Value, ...] = tuple(_children)
        self._op = _op
        self._backward: Callable[[], None] = lambda: None

    def __repr__(self) -> str:
        name = f"{self.label}=" if self.label else ""
        return f"Value({name}{self.data!r}, grad={self.grad!r})"

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of ``data``."""
        return self.data.shape

    @staticmethod
    def _lift(other: Operand) -> Value:
        return other if isinstance(other, Value) else Value(other)

    # ---- binary gates ---------------------------------------------------------------------------

    def __add__(self, other: Operand) -> Value:
        other = self._lift(other)
        out = Value(self.data + other.data, _children=(self, other), _op="+")

        def _backward() -> None:
            # Add gate: passes the upstream gradient unchanged to both inputs.
            # `+=`, never `=`: a node used twice receives a contribution from each use.
            self.grad += _unbroadcast(out.grad, self.shape)
            other.grad += _unbroadcast(out.grad, other.shape)

        out._backward = _backward
        return out

    def __sub__(self, other: Operand) -> Value:
        other = self._lift(other)
        out = Value(self.data - other.data, _children=(self, other), _op="-")

        def _backward() -> None:
            self.grad += _unbroadcast(out.grad, self.shape)
            other.grad -= _unbroadcast(out.grad, other.shape)

        out._backward = _backward
        return out

    def __mul__(self, other: Operand) -> Value:
        other = self._lift(other)
        out = Value(self.data * other.data, _children=(self, other), _op="*")

        def _backward() -> None:
            # Mul gate: each input's gradient is the *other* input times upstream ("swap").
            self.grad += _unbroadcast(other.data * out.grad, self.shape)
            other.grad += _unbroadcast(self.data * out.grad, other.shape)

        out._backward = _backward
        return out

    def __truediv__(self, other: Operand) -> Value:
        other = self._lift(other)
        out = Value(self.data / other.data, _children=(self, other), _op="/")

        def _backward() -> None:
            # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2.
            self.grad += _unbroadcast(out.grad / other.data, self.shape)
            other.grad += _unbroadcast(-out.grad * self.data / other.data**2, other.shape)

        out._backward = _backward
        return out

    def __pow__(self, exponent: float) -> Value:
        """``self ** exponent`` for a constant (non-Value) exponent."""
        if isinstance(exponent, Value):
            raise TypeError("Value ** Value is not supported; use exp(b * log(a))")
        p = float(exponent)
        out = Value(self.data**p, _children=(self,), _op=f"**{p:g}")

        def _backward() -> None:
            self.grad += p * self.data ** (p - 1.0) * out.grad

        out._backward = _backward
        return out

    def __matmul__(self, other: Operand) -> Value:
        """Matrix product of 1-D or 2-D values (numpy ``@`` semantics)."""
        other = self._lift(other)
        if not (1 <= self.data.ndim <= 2 and 1 <= other.data.ndim <= 2):
            raise ValueError(f"@ supports 1-D and 2-D values; got shapes {self.shape} and {other.shape}")
        out = Value(self.data @ other.data, _children=(self, other), _op="@")

        def _backward() -> None:
            # View both operands as matrices: a vector on the left is a row (1, k),
            # on the right a column (k, 1); then dA = G @ B.T and dB = A.T @ G.
            a = self.data if self.data.ndim == 2 else self.data[None, :]
            b = other.data if other.data.ndim == 2 else other.data[:, None]
            g = out.grad.reshape(a.shape[0], b.shape[1])
            self.grad += (g @ b.T).reshape(self.shape)
            other.grad += (a.T @ g).reshape(other.shape)

        out._backward = _backward
        return out

    def max(self, other: Operand) -> Value:
        """Elementwise maximum of two values (the lecture's max gate)."""
        other = self._lift(other)
        out = Value(np.maximum(self.data, other.data), _children=(self, other), _op="max")

        def _backward() -> None:
            # Max gate routes the gradient to the larger input; on an exact tie any split is a
            # valid subgradient, and an even split is what torch.maximum does.
            share = np.where(self.data > other.data, 1.0, np.where(self.data == other.data, 0.5, 0.0))
            self.grad += _unbroadcast(share * out.grad, self.shape)
            other.grad += _unbroadcast((1.0 - share) * out.grad, other.shape)

        out._backward = _backward
        return out

    def __neg__(self) -> Value:
        return self * -1.0

    def __radd__(self, other: Operand) -> Value:
        return self + other

    def __rsub__(self, other: Operand) -> Value:
        return self._lift(other) - self

    def __rmul__(self, other: Operand) -> Value:
        return self * other

    def __rtruediv__(self, other: Operand) -> Value:
        return self._lift(other) / self

    # ---- unary gates ----------------------------------------------------------------------------

    def _unary(self, data: np.ndarray, local_grad: np.ndarray, op: str) -> Value:
        """A node ``f(self)`` whose derivative ``f'(self)`` is ``local_grad`` (same shape)."""
        out = Value(data, _children=(self,), _op=op)

        def _backward() -> None:
            self.grad += local_grad * out.grad

        out._backward = _backward
        return out

    def exp(self) -> Value:
        """Elementwise ``e ** x``; its derivative is itself."""
        e = np.exp(self.data)
        return self._unary(e, e, "exp")

    def log(self) -> Value:
        """Elementwise natural log (of positive data); derivative ``1 / x``."""
        return self._unary(np.log(self.data), 1.0 / self.data, "log")

    def tanh(self) -> Value:
        """Elementwise tanh; derivative ``1 - tanh(x)^2``."""
        t = np.tanh(self.data)
        return self._unary(t, 1.0 - t * t, "tanh")

    def sigmoid(self) -> Value:
        """Elementwise logistic function; derivative ``s (1 - s)`` (the lecture's sigmoid gate)."""
        e = np.exp(-np.abs(self.data))  # <= 1: no overflow on either side
        s = np.where(self.data >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        return self._unary(s, s * (1.0 - s), "sigmoid")

    def relu(self) -> Value:
        """Elementwise ``max(0, x)``; gradient 1 where ``x > 0``, else 0 (0 at 0, like torch)."""
        return self._unary(np.maximum(self.data, 0.0), (self.data > 0).astype(np.float64), "relu")

    def sum(self) -> Value:
        """Sum of all elements, a scalar ``()`` value."""
        out = Value(self.data.sum(), _children=(self,), _op="sum")

        def _backward() -> None:
            self.grad += np.broadcast_to(out.grad, self.shape)

        out._backward = _backward
        return out

    # ---- backprop -------------------------------------------------------------------------------

    def topological_order(self) -> list[Value]:
        """Every node this value depends on, inputs before the nodes computed from them."""
        order: list[Value] = []
        visited: set[int] = set()
        # Iterative post-order DFS: a recursive one hits Python's recursion limit on long chains.
        stack: list[tuple[Value, bool]] = [(self, False)]
        while stack:
            node, children_done = stack.pop()
            if children_done:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in node._prev if id(child) not in visited)
        return order

    def backward(self, grad: np.ndarray | float | None = None) -> None:
        """Backpropagate from this node.

        Args:
            grad: upstream gradient, shape ``S``; defaults to ones (for a scalar,
                d self / d self = 1; for an array, the gradient of ``self.sum()``).

        Leaf gradients accumulate across calls, as in torch (reset them with
        :meth:`zero_grad`); gradients of intermediate nodes are recomputed.
        """
        order = self.topological_order()
        for node in order:
            if node._prev:
                node.grad = np.zeros_like(node.data)
        seed = np.ones_like(self.data) if grad is None else np.broadcast_to(np.asarray(grad, np.float64), self.shape)
        self.grad = self.grad + seed if not self._prev else seed.copy()
        # Reverse topological order: a node passes its gradient on only after every node
        # that consumed it has added its share (multivariate chain rule: contributions sum).
        for node in reversed(order):
            node._backward()

    def zero_grad(self) -> None:
        """Set the gradient of this node and every node it depends on to zero."""
        for node in self.topological_order():
            node.grad = np.zeros_like(node.data)
