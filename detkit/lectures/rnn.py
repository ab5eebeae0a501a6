"""Recurrent networks of CS231n lecture 10: vanilla (tanh) RNN and LSTM, cells and unrolled layers.

Shape glossary: ``T`` time steps, ``N`` batch, ``I`` input size, ``H`` hidden
size, ``L`` layers. Weights use torch's layout so that ``torch.nn.RNNCell`` /
``LSTMCell`` state dicts load into :class:`ScratchRNNCell` / :class:`ScratchLSTMCell`,
and ``torch.nn.RNN`` / ``LSTM`` ones (unidirectional, no dropout) into
:class:`ScratchRNN` / :class:`ScratchLSTM`:
``weight_ih (G*H, I)``, ``weight_hh (G*H, H)``, ``bias_ih (G*H,)``, ``bias_hh (G*H,)``
with ``G = 1`` for the RNN and ``G = 4`` for the LSTM, gate blocks in order ``i, f, g, o``.

Vanilla RNN: ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``. Backprop
through time multiplies by ``W_hh^T`` (and a tanh derivative <= 1) at every
step, so gradients explode or vanish geometrically in ``T`` with the largest
singular value of ``W_hh``.

LSTM: ``[i, f, g, o] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh``; input, forget and
output gates go through a sigmoid, the candidate ``g`` through tanh;
``c_t = f * c_{t-1} + i * g``; ``h_t = o * tanh(c_t)``. The cell state's backward
path is an elementwise product with ``f`` only, no matrix multiply: the
"gradient highway" (as in ResNets) that keeps long-range gradients alive.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, TypeVar

import torch
from torch import Tensor, nn

from detkit.lectures.activations import scratch_relu, scratch_sigmoid, scratch_tanh

__all__ = ["ScratchLSTM", "ScratchLSTMCell", "ScratchRNN", "ScratchRNNCell", "lstm_cell", "rnn_cell", "unroll"]

State = TypeVar("State", Tensor, tuple[Tensor, Tensor])


def _affine(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor:
    """``x W_ih^T + b_ih + h W_hh^T + b_hh``: ``(N, I), (N, H) -> (N, G*H)``."""
    z = x @ w_ih.T + h @ w_hh.T
    if b_ih is not None:
        z = z + b_ih
    if b_hh is not None:
        z = z + b_hh
    return z


def rnn_cell(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    nonlinearity: Literal["tanh", "relu"] = "tanh",
) -> Tensor:
    """One vanilla RNN step: ``x (N, I), h (N, H) -> h' (N, H)``."""
    z = _affine(x, h, w_ih, w_hh, b_ih, b_hh)
    return scratch_tanh(z) if nonlinearity == "tanh" else scratch_relu(z)


def lstm_cell(
    x: Tensor,
    state: tuple[Tensor, Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step: ``x (N, I), (h, c) (N, H) each -> (h', c')``."""
    h, c = state
    gates = _affine(x, h, w_ih, w_hh, b_ih, b_hh)  # (N, 4H)
    i, f, g, o = gates.chunk(4, dim=1)  # (N, 4H) -> 4 x (N, H), torch's gate order
    # Gates in (0, 1): how much to write, keep, reveal.
    i, f, o = scratch_sigmoid(i), scratch_sigmoid(f), scratch_sigmoid(o)
    g = scratch_tanh(g)  # candidate values in (-1, 1)
    c_next = f * c + i * g  # additive update: the gradient through c is only scaled by f
    h_next = o * scratch_tanh(c_next)
    return h_next, c_next


def unroll(cell: Callable[[Tensor, State], State], xs: Tensor, state: State) -> tuple[Tensor, State]:
    """Run ``cell`` over time: ``xs (T, N, I)`` from ``state`` -> ``(outputs (T, N, H), final state)``.

    The output at each step is the hidden state ``h`` (the first element of an LSTM state).
    """
    outputs = []
    for x_t in xs.unbind(0):  # (T, N, I) -> T x (N, I)
        state = cell(x_t, state)
        outputs.append(state if isinstance(state, Tensor) else state[0])
    if not outputs:
        raise ValueError("cannot unroll over an empty sequence (T = 0)")
    return torch.stack(outputs), state  # T x (N, H) -> (T, N, H)


def _uniform_init(module: nn.Module, hidden_size: int) -> None:
    # torch's default for recurrent layers: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H)).
    bound = 1.0 / math.sqrt(hidden_size)
    for p in module.parameters():
        nn.init.uniform_(p, -bound, bound)


class _CellBase(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, gates: int, *, bias: bool) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(gates * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(gates * hidden_size)) if bias else None
        _uniform_init(self, hidden_size)

    def _zeros(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], self.hidden_size, dtype=x.dtype, device=x.device)


class ScratchRNNCell(_CellBase):
    """Vanilla RNN cell, ``x (N, I), h (N, H) | None -> h' (N, H)`` (``h = 0`` if None)."""

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: Literal["tanh", "relu"] = "tanh"
    ) -> None:
        super().__init__(input_size, hidden_size, 1, bias=bias)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity: Literal["tanh", "relu"] = nonlinearity

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        """``(N, I), (N, H) -> (N, H)``."""
        h = self._zeros(x) if h is None else h
        return rnn_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity)


class ScratchLSTMCell(_CellBase):
    """LSTM cell, ``x (N, I), (h, c) | None -> (h', c')``, each ``(N, H)`` (zeros if None)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__(input_size, hidden_size, 4, bias=bias)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """``(N, I), ((N, H), (N, H)) -> ((N, H), (N, H))``."""
        if state is None:
            state = (self._zeros(x), self._zeros(x))
        return lstm_cell(x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class _LayerBase(nn.Module):
    """Stacked unidirectional recurrent layers with torch's parameter names ``weight_ih_l{k}`` etc."""

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int, gates: int, *, bias: bool, batch_first: bool
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.batch_first = batch_first
        for k in range(num_layers):
            in_size = input_size if k == 0 else hidden_size  # layer k reads layer k-1's hidden states
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(gates * hidden_size, in_size)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(gates * hidden_size, hidden_size)))
            if bias:
                self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(gates * hidden_size)))
                self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(gates * hidden_size)))
        self.bias = bias
        _uniform_init(self, hidden_size)

    def _layer_weights(self, k: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        w_ih: Tensor = getattr(self, f"weight_ih_l{k}")
        w_hh: Tensor = getattr(self, f"weight_hh_l{k}")
        b_ih: Tensor | None = getattr(self, f"bias_ih_l{k}") if self.bias else None
        b_hh: Tensor | None = getattr(self, f"bias_hh_l{k}") if self.bias else None
        return w_ih, w_hh, b_ih, b_hh

    def _time_major(self, xs: Tensor) -> Tensor:
        if xs.dim() != 3:
            layout = "(N, T, I)" if self.batch_first else "(T, N, I)"
            raise ValueError(f"expected a batched sequence {layout}, got {tuple(xs.shape)}")
        return xs.transpose(0, 1) if self.batch_first else xs  # (N, T, I) -> (T, N, I)

    def _zeros(self, xs: Tensor) -> Tensor:
        return torch.zeros(self.num_layers, xs.shape[1], self.hidden_size, dtype=xs.dtype, device=xs.device)


class ScratchRNN(_LayerBase):
    """Multi-layer vanilla RNN; ``forward(xs, h0) -> (outputs, h_n)`` like ``torch.nn.RNN``.

    ``xs``: ``(T, N, I)`` (``(N, T, I)`` if ``batch_first``); ``h0``: ``(L, N, H)`` or None (zeros).
    ``outputs``: the last layer's hidden states ``(T, N, H)`` (``(N, T, H)``); ``h_n``: ``(L, N, H)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: Literal["tanh", "relu"] = "tanh",
        bias: bool = True,
        batch_first: bool = False,
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, 1, bias=bias, batch_first=batch_first)
        self.nonlinearity: Literal["tanh", "relu"] = nonlinearity

    def _step(self, k: int) -> Callable[[Tensor, Tensor], Tensor]:
        w_ih, w_hh, b_ih, b_hh = self._layer_weights(k)
        return lambda x, h: rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, self.nonlinearity)

    def forward(self, xs: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(T, N, I), (L, N, H) -> ((T, N, H), (L, N, H))``."""
        seq = self._time_major(xs)
        h0 = self._zeros(seq) if h0 is None else h0
        finals = []
        for k in range(self.num_layers):
            seq, h_last = unroll(self._step(k), seq, h0[k])  # layer k's outputs are layer k+1's inputs
            finals.append(h_last)
        out = seq.transpose(0, 1) if self.batch_first else seq
        return out, torch.stack(finals)


class ScratchLSTM(_LayerBase):
    """Multi-layer LSTM; ``forward(xs, (h0, c0)) -> (outputs, (h_n, c_n))`` like ``torch.nn.LSTM``.

    ``xs``: ``(T, N, I)`` (``(N, T, I)`` if ``batch_first``); ``h0, c0``: ``(L, N, H)`` or None.
    ``outputs``: ``(T, N, H)`` (``(N, T, H)``); ``h_n, c_n``: ``(L, N, H)``.
    """

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True, batch_first: bool = False
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, 4, bias=bias, batch_first=batch_first)

    def _step(self, k: int) -> Callable[[Tensor, tuple[Tensor, Tensor]], tuple[Tensor, Tensor]]:
        w_ih, w_hh, b_ih, b_hh = self._layer_weights(k)
        return lambda x, s: lstm_cell(x, s, w_ih, w_hh, b_ih, b_hh)

    def forward(
        self, xs: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``(T, N, I), ((L, N, H), (L, N, H)) -> ((T, N, H), ((L, N, H), (L, N, H)))``."""
        seq = self._time_major(xs)
        h0, c0 = (self._zeros(seq), self._zeros(seq)) if state is None else state
        h_finals, c_finals = [], []
        for k in range(self.num_layers):
            seq, (h_last, c_last) = unroll(self._step(k), seq, (h0[k], c0[k]))
            h_finals.append(h_last)
            c_finals.append(c_last)
        out = seq.transpose(0, 1) if self.batch_first else seq
        return out, (torch.stack(h_finals), torch.stack(c_finals))
