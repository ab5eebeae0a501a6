"""Freezing for transfer learning: requires_grad flags, gradients and optimizer steps on a small model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detkit.lectures.transfer import fine_tune_last, freeze_all_but_head, trainable_parameters


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (torch's thread pool spins badly on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class SmallNet(nn.Module):
    """Three "stages" and a head, like a miniature ResNet."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


def names_with_prefix(model: nn.Module, *prefixes: str) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith(prefixes)]


def train_step(model: nn.Module) -> dict[str, torch.Tensor]:
    """One SGD step on the trainable parameters; returns the parameters before the step."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(trainable_parameters(model), lr=0.1)
    x = torch.randn(2, 3, 6, 6)
    F.cross_entropy(model(x), torch.tensor([0, 3])).backward()
    opt.step()
    return before


def test_freeze_all_but_head_trains_only_the_head():
    torch.manual_seed(0)
    model = SmallNet()
    trainable = freeze_all_but_head(model, ["fc"])
    assert trainable == ["fc.weight", "fc.bias"]
    before = train_step(model)
    for name, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        assert changed == name.startswith("fc."), name
        assert (p.grad is not None) == name.startswith("fc."), name  # no gradient is even computed


def test_freeze_with_nested_head_names_and_unknown_names():
    model = SmallNet()
    trainable = freeze_all_but_head(model, ["layer2.0", "fc"])
    assert trainable == names_with_prefix(model, "layer2.0.", "fc.")
    with pytest.raises(KeyError, match="stem, layer1, layer2, fc"):
        freeze_all_but_head(model, ["head"])


def test_fine_tune_last_thaws_stages_from_the_top():
    model = SmallNet()
    stages = [model.stem, model.layer1, model.layer2, model.fc]
    assert fine_tune_last(model, 1, stages) == names_with_prefix(model, "fc.")
    assert fine_tune_last(model, 3, stages) == names_with_prefix(model, "layer1.", "layer2.", "fc.")
    assert fine_tune_last(model, 2, stages) == names_with_prefix(model, "layer2.", "fc.")  # re-freezes layer1
    assert fine_tune_last(model, 0, stages) == []
    assert len(fine_tune_last(model, 4, stages)) == len(list(model.parameters()))
    before = train_step(model) if fine_tune_last(model, 2, stages) else {}
    for name, p in model.named_parameters():
        assert (not torch.equal(p.detach(), before[name])) == name.startswith(("layer2.", "fc.")), name
    with pytest.raises(ValueError, match="n_stages"):
        fine_tune_last(model, 5, stages)
    with pytest.raises(ValueError, match="not a submodule"):
        fine_tune_last(model, 1, [nn.Linear(2, 2)])
