"""Folding frozen batch norm keeps a detector's outputs."""

import torch

from detkit.backbones import ResNet
from detkit.backbones.fold import fold_frozen_batchnorm
from detkit.backbones.norm import FrozenBatchNorm2d


def randomize_frozen_norms(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.weight.shape[0]
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def test_folding_a_resnet_keeps_every_stage():
    torch.manual_seed(0)
    model = ResNet(depth=50, norm="frozen_bn").eval()
    randomize_frozen_norms(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        assert fold_frozen_batchnorm(model) == 53  # stem + 16 blocks x 3 + 4 projections
        after = model(x)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    for name in before.names():
        error = (before[name] - after[name]).abs().max() / before[name].abs().max()
        assert error < 1e-5, (name, error)


def test_trainable_batch_norm_is_left_alone():
    model = ResNet(depth=18, norm="bn")
    assert fold_frozen_batchnorm(model) == 0
