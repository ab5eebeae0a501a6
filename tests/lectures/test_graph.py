"""The computational-graph engine against the lecture's hand-computed examples and torch.autograd."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from detkit.lectures.graph import Value


def test_lecture_example_f_equals_x_plus_y_times_z() -> None:
    x, y, z = Value(-2.0), Value(5.0), Value(-4.0)
    f = (x + y) * z
    f.backward()
    assert f.data == -12.0
    assert (x.grad, y.grad, z.grad) == (-4.0, -4.0, 3.0)


def test_lecture_sigmoid_neuron() -> None:
    # f(w, x) = sigmoid(w0 x0 + w1 x1 + w2), w = [2, -3, -3], x = [-1, -2]: the lecture's circuit.
    w0, w1, w2 = Value(2.0), Value(-3.0), Value(-3.0)
    x0, x1 = Value(-1.0), Value(-2.0)
    f = (w0 * x0 + w1 * x1 + w2).sigmoid()  # the inner sum is 1
    f.backward()
    s = 1.0 / (1.0 + np.exp(-1.0))  # 0.73
    local = s * (1.0 - s)  # 0.20, the sigmoid gate's local gradient
    assert float(f.data) == pytest.approx(s)
    grads = [float(v.grad) for v in (w0, w1, w2, x0, x1)]
    np.testing.assert_allclose(grads, [-1 * local, -2 * local, local, 2 * local, -3 * local], rtol=1e-12)
    # Same circuit through the primitive gates of the lecture's long form: 1 / (1 + exp(-s)).
    w0.zero_grad(), w1.zero_grad()
    g = 1.0 / (1.0 + (-(w0 * x0 + w1 * x1 + w2)).exp())
    g.backward()
    assert float(w0.grad) == pytest.approx(-local, rel=1e-12)


def test_two_layer_network_matches_torch() -> None:
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=3), "W1": rng.normal(size=(4, 3)), "b1": rng.normal(size=4),
              "W2": rng.normal(size=(2, 4)), "b2": rng.normal(size=2)}  # fmt: skip
    v = {k: Value(a) for k, a in arrays.items()}
    out = ((v["W2"] @ (v["W1"] @ v["x"] + v["b1"]).relu() + v["b2"]).tanh() * Value(np.array([1.0, -2.0]))).sum()
    out.backward()
    t = {k: torch.tensor(a, requires_grad=True) for k, a in arrays.items()}
    ref = (torch.tanh(t["W2"] @ torch.relu(t["W1"] @ t["x"] + t["b1"]) + t["b2"]) * torch.tensor([1.0, -2.0])).sum()
    ref.backward()
    assert float(out.data) == pytest.approx(ref.item(), rel=1e-12)
    for k in arrays:
        np.testing.assert_allclose(v[k].grad, t[k].grad.numpy(), rtol=1e-10, atol=1e-14, err_msg=k)


def test_batched_layer_with_broadcast_bias_matches_torch() -> None:
    rng = np.random.default_rng(1)
    X, W, b = rng.normal(size=(5, 3)), rng.normal(size=(3, 2)), rng.normal(size=(2,))
    vX, vW, vb = Value(X), Value(W), Value(b)
    ((vX @ vW + vb).sigmoid() ** 2).sum().backward()
    tX, tW, tb = (torch.tensor(a, requires_grad=True) for a in (X, W, b))
    (torch.sigmoid(tX @ tW + tb) ** 2).sum().backward()
    for ours, theirs in ((vX, tX), (vW, tW), (vb, tb)):
        assert ours.grad.shape == ours.data.shape
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-10)


def test_reused_node_accumulates_gradient() -> None:
    x = Value(3.0)
    f = x * x + x  # df/dx = 2x + 1
    f.backward()
    assert float(x.grad) == 7.0


# ---- random expressions vs torch.autograd -------------------------------------------------------------

UNARY = ["exp_tanh", "log_pos", "tanh", "sigmoid", "relu", "neg", "pow2", "pow_half_pos", "pow_m1_pos"]
BINARY = ["add", "sub", "mul", "div_pos", "max", "radd", "rmul", "rsub", "rdiv_pos"]


def _apply(op: str, a: Any, b: Any, ops: dict[str, Callable[..., Any]]) -> Any:
    """One instruction, written once for both engines; positive-domain ops wrap their input in 1 + u^2."""
    pos = lambda u: 1.0 + u * u  # noqa: E731
    table: dict[str, Callable[[], Any]] = {
        "exp_tanh": lambda: ops["exp"](ops["tanh"](a)),  # bounded argument: no overflow
        "log_pos": lambda: ops["log"](pos(a)),
        "tanh": lambda: ops["tanh"](a),
        "sigmoid": lambda: ops["sigmoid"](a),
        "relu": lambda: ops["relu"](a),
        "neg": lambda: -a,
        "pow2": lambda: a**2,
        "pow_half_pos": lambda: pos(a) ** 0.5,
        "pow_m1_pos": lambda: pos(a) ** -1.5,
        "add": lambda: a + b,
        "sub": lambda: a - b,
        "mul": lambda: a * b,
        "div_pos": lambda: a / pos(b),
        "max": lambda: ops["max"](a, b),
        "radd": lambda: 0.5 + a,
        "rmul": lambda: -1.5 * a,
        "rsub": lambda: 2.0 - a,
        "rdiv_pos": lambda: 3.0 / pos(a),
    }
    return table[op]()


VALUE_OPS: dict[str, Callable[..., Any]] = {
    "exp": Value.exp, "log": Value.log, "tanh": Value.tanh, "sigmoid": Value.sigmoid,
    "relu": Value.relu, "max": Value.max,
}  # fmt: skip
TORCH_OPS: dict[str, Callable[..., Any]] = {
    "exp": torch.exp, "log": torch.log, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "relu": torch.relu, "max": torch.maximum,
}  # fmt: skip


@pytest.mark.parametrize("seed", range(12))
def test_random_expressions_match_torch_autograd(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Leaves of broadcast-compatible shapes: a scalar, a row, a column and a matrix.
    shapes = [(), (3,), (2, 1), (2, 3)]
    leaves = [rng.normal(size=s) for s in shapes]
    program = []
    for _ in range(25):
        op = rng.choice(UNARY + BINARY)
        program.append((str(op), int(rng.integers(0, 4 + len(program))), int(rng.integers(0, 4 + len(program)))))

    def run(inputs: list[Any], ops: dict[str, Callable[..., Any]]) -> Any:
        nodes = list(inputs)
        for op, i, j in program:  # operands may be any earlier node: graphs reuse nodes freely
            nodes.append(_apply(op, nodes[i], nodes[j], ops))
        out = nodes[-1]
        for node in nodes[:-1]:  # every leaf and intermediate feeds the output: every path is exercised
            out = out + 0.1 * node
        return out * Value(np.ones((2, 3))) if isinstance(out, Value) else out * torch.ones(2, 3, dtype=torch.float64)

    values = [Value(a) for a in leaves]
    out = run(values, VALUE_OPS).sum()
    out.backward()
    tensors = [torch.tensor(a, requires_grad=True) for a in leaves]
    ref = run(tensors, TORCH_OPS).sum()
    ref.backward()
    assert float(out.data) == pytest.approx(ref.item(), rel=1e-10)
    for v, t in zip(values, tensors):
        np.testing.assert_allclose(v.grad, t.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_max_gate_routes_and_splits_ties_like_torch() -> None:
    a_data, b_data = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0])
    a, b = Value(a_data), Value(b_data)
    (a.max(b) * Value(np.array([1.0, 10.0, 100.0]))).sum().backward()
    ta, tb = torch.tensor(a_data, requires_grad=True), torch.tensor(b_data, requires_grad=True)
    (torch.maximum(ta, tb) * torch.tensor([1.0, 10.0, 100.0])).sum().backward()
    np.testing.assert_array_equal(a.grad, ta.grad.numpy())  # [0, 5, 100]
    np.testing.assert_array_equal(b.grad, tb.grad.numpy())  # [1, 5, 0]


def test_relu_gradient_at_zero_is_zero_like_torch() -> None:
    x = Value(np.array([-1.0, 0.0, 2.0]))
    x.relu().sum().backward()
    t = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    torch.relu(t).sum().backward()
    np.testing.assert_array_equal(x.grad, t.grad.numpy())


def test_backward_twice_accumulates_leaves_like_torch() -> None:
    x = Value(1.5)
    f = (x * x).tanh() * x
    f.backward()
    first = float(x.grad)
    f.backward()
    t = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    g = torch.tanh(t * t) * t
    g.backward(retain_graph=True)
    g.backward()
    assert float(x.grad) == pytest.approx(2 * first, rel=1e-14)
    assert float(x.grad) == pytest.approx(t.grad.item(), rel=1e-12)
    f.zero_grad()
    assert float(x.grad) == 0.0


def test_deep_chain_does_not_hit_recursion_limit() -> None:
    x = Value(0.5)
    y = x
    for _ in range(5000):
        y = y + x
    y.backward()
    assert float(x.grad) == 5001.0
