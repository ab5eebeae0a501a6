"""Folding frozen batch norm keeps a detector's outputs."""

import torch
import torchvision

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


class FoldableAffine(torch.nn.Module):
    """A plugin's own frozen per-channel affine that declares itself foldable."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.rand(channels) + 0.5)
        self.register_buffer("shift", torch.randn(channels))

    def scale_and_shift(self):
        return self.scale, self.shift

    def forward(self, x):
        return x * self.scale.reshape(1, -1, 1, 1) + self.shift.reshape(1, -1, 1, 1)


def test_torchvision_frozen_norms_and_declared_foldable_modules_fold_too():
    torch.manual_seed(0)
    tv_norm = torchvision.ops.FrozenBatchNorm2d(8)
    tv_norm.weight.copy_(torch.rand(8) + 0.5)
    tv_norm.bias.copy_(torch.randn(8))
    tv_norm.running_mean.copy_(torch.randn(8))
    tv_norm.running_var.copy_(torch.rand(8) + 0.5)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), tv_norm, torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 1), FoldableAffine(4),
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        assert fold_frozen_batchnorm(model) == 2
        after = model(x)
    assert isinstance(model[1], torch.nn.Identity) and isinstance(model[4], torch.nn.Identity)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_a_torchvision_backbone_with_frozen_norms_folds_like_detkits():
    body = torchvision.models.resnet18(weights=None, norm_layer=torchvision.ops.FrozenBatchNorm2d).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = body(x)
        assert fold_frozen_batchnorm(body) == 20  # stem + 8 blocks x 2 + 3 projections
        after = body(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
