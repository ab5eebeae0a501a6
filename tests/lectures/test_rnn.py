"""RNN and LSTM cells and unrolled layers against torch's, with copied weights (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detkit.lectures.rnn import ScratchLSTM, ScratchLSTMCell, ScratchRNN, ScratchRNNCell, lstm_cell, unroll


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (torch's thread pool spins badly on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ATOL = 1e-6


def loaded_pair(ours_cls, theirs_cls, *args, **kwargs):
    torch.manual_seed(0)
    theirs = theirs_cls(*args, **kwargs).double()
    ours = ours_cls(*args, **kwargs).double()
    ours.load_state_dict(theirs.state_dict())  # torch's layout and names load directly
    return ours, theirs


def assert_grads_equal(ours: nn.Module, theirs: nn.Module, inputs_ours, inputs_theirs):
    for a, b in zip(inputs_ours, inputs_theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=ATOL)
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs_params[name].grad, rtol=0, atol=ATOL)


def leaves(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return ([t.clone().requires_grad_() for t in tensors], [t.clone().requires_grad_() for t in tensors])


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_rnn_cell_matches_torch(nonlinearity, bias):
    ours, theirs = loaded_pair(ScratchRNNCell, nn.RNNCell, 4, 3, bias=bias, nonlinearity=nonlinearity)
    (x1, h1), (x2, h2) = leaves(torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64))
    out1, out2 = ours(x1, h1), theirs(x2, h2)
    torch.testing.assert_close(out1, out2, rtol=0, atol=ATOL)
    upstream = torch.randn_like(out1)
    (out1 * upstream).sum().backward()
    (out2 * upstream).sum().backward()
    assert_grads_equal(ours, theirs, [x1, h1], [x2, h2])
    torch.testing.assert_close(ours(x1.detach()), theirs(x2.detach()))  # h = 0 by default


def test_lstm_cell_matches_torch():
    ours, theirs = loaded_pair(ScratchLSTMCell, nn.LSTMCell, 4, 3)
    tensors = [torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64),
               torch.randn(5, 3, dtype=torch.float64)]
    (x1, h1, c1), (x2, h2, c2) = leaves(*tensors)
    (ho1, co1), (ho2, co2) = ours(x1, (h1, c1)), theirs(x2, (h2, c2))
    torch.testing.assert_close(ho1, ho2, rtol=0, atol=ATOL)
    torch.testing.assert_close(co1, co2, rtol=0, atol=ATOL)
    u, v = torch.randn_like(ho1), torch.randn_like(co1)
    ((ho1 * u).sum() + (co1 * v).sum()).backward()
    ((ho2 * u).sum() + (co2 * v).sum()).backward()
    assert_grads_equal(ours, theirs, [x1, h1, c1], [x2, h2, c2])


def test_lstm_cell_gradchecks():
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    w_ih = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(8, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: lstm_cell(a[0], (a[1], a[2]), a[3], a[4]), (x, h, c, w_ih, w_hh))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_rnn_layer_matches_torch(batch_first, num_layers):
    ours, theirs = loaded_pair(ScratchRNN, nn.RNN, 4, 3, num_layers=num_layers, batch_first=batch_first)
    xs = torch.randn(2, 6, 4, dtype=torch.float64) if batch_first else torch.randn(6, 2, 4, dtype=torch.float64)
    (x1, h1), (x2, h2) = leaves(xs, torch.randn(num_layers, 2, 3, dtype=torch.float64))
    (out1, hn1), (out2, hn2) = ours(x1, h1), theirs(x2, h2)
    torch.testing.assert_close(out1, out2, rtol=0, atol=ATOL)
    torch.testing.assert_close(hn1, hn2, rtol=0, atol=ATOL)
    u, v = torch.randn_like(out1), torch.randn_like(hn1)
    ((out1 * u).sum() + (hn1 * v).sum()).backward()
    ((out2 * u).sum() + (hn2 * v).sum()).backward()
    assert_grads_equal(ours, theirs, [x1, h1], [x2, h2])


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_layer_matches_torch(batch_first, num_layers):
    ours, theirs = loaded_pair(ScratchLSTM, nn.LSTM, 4, 3, num_layers=num_layers, batch_first=batch_first)
    xs = torch.randn(2, 6, 4, dtype=torch.float64) if batch_first else torch.randn(6, 2, 4, dtype=torch.float64)
    state = [torch.randn(num_layers, 2, 3, dtype=torch.float64) for _ in range(2)]
    (x1, h1, c1), (x2, h2, c2) = leaves(xs, *state)
    (out1, (hn1, cn1)), (out2, (hn2, cn2)) = ours(x1, (h1, c1)), theirs(x2, (h2, c2))
    for a, b in [(out1, out2), (hn1, hn2), (cn1, cn2)]:
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
    u, v, w = torch.randn_like(out1), torch.randn_like(hn1), torch.randn_like(cn1)
    ((out1 * u).sum() + (hn1 * v).sum() + (cn1 * w).sum()).backward()
    ((out2 * u).sum() + (hn2 * v).sum() + (cn2 * w).sum()).backward()
    assert_grads_equal(ours, theirs, [x1, h1, c1], [x2, h2, c2])
    out_default, _ = ours(xs)
    torch.testing.assert_close(out_default, theirs(xs)[0], rtol=0, atol=ATOL)  # zero initial state


def test_unroll_equals_a_hand_loop_and_rejects_empty_sequences():
    cell = ScratchRNNCell(3, 2).double()
    xs = torch.randn(4, 5, 3, dtype=torch.float64)
    h = torch.zeros(5, 2, dtype=torch.float64)
    outputs, final = unroll(cell, xs, h)
    for t in range(4):
        h = cell(xs[t], h)
        torch.testing.assert_close(outputs[t], h)
    torch.testing.assert_close(final, h)
    with pytest.raises(ValueError, match="empty"):
        unroll(cell, xs[:0], h)
