"""Folding frozen batch norm keeps a detector's outputs, in inference (once) and in training (on the fly)."""

import pytest
import torch
import torchvision

from detkit.backbones import ResNet
from detkit.backbones.fold import fold_frozen_batchnorm
from detkit.backbones.norm import FrozenBatchNorm2d, conv_then_norm
from detkit.ops.winograd import WinogradConv2d


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


def _conv_norm_pair(conv: torch.nn.Conv2d, seed: int = 0) -> FrozenBatchNorm2d:
    norm = FrozenBatchNorm2d(conv.out_channels)
    randomize_frozen_norms(torch.nn.Sequential(norm), seed)
    return norm


@pytest.mark.parametrize("winograd", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_conv_then_norm_folds_on_the_fly_with_the_same_values_and_gradients(winograd, with_bias, monkeypatch):
    """``conv_then_norm`` against ``norm(conv(x))`` in float64: outputs and every gradient."""
    monkeypatch.setattr(WinogradConv2d, "min_training_tiles", 1)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, bias=with_bias).double().to(memory_format=torch.channels_last)
    if winograd:
        conv = WinogradConv2d.from_conv(conv)
    norm = _conv_norm_pair(conv).double()
    x = torch.randn(2, 8, 12, 10, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    params = [x, *conv.parameters()]
    folded = conv_then_norm(conv, norm, x)
    plain = norm(conv(x))
    torch.testing.assert_close(folded, plain)
    grad = torch.randn_like(plain)
    for a, b in zip(torch.autograd.grad(folded, params, grad), torch.autograd.grad(plain, params, grad), strict=True):
        torch.testing.assert_close(a, b)
    assert norm.weight.grad is None  # the norm stays frozen


def test_conv_then_norm_leaves_hooked_modules_and_other_norms_as_they_are():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    norm = _conv_norm_pair(conv)
    x = torch.randn(1, 3, 8, 8)
    seen = []
    handle = norm.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    out = conv_then_norm(conv, norm, x)
    handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], conv(x))  # the hook saw the convolution's own output
    torch.testing.assert_close(out, norm(conv(x)))
    trainable = torch.nn.BatchNorm2d(4).train()
    conv_then_norm(conv, trainable, x)
    assert int(trainable.num_batches_tracked) == 1  # ran as itself, batch statistics included


def test_a_resnet_trains_through_the_folded_path_with_torchvision_s_gradients():
    """Every gradient of a ResNet-50 against torchvision's (float64: 50 layers of float32 rounding would blur it)."""
    torch.manual_seed(0)
    ours = ResNet(depth=50, norm="frozen_bn", frozen_stages=0).train()
    randomize_frozen_norms(ours)
    reference = torchvision.models.resnet50(norm_layer=torchvision.ops.FrozenBatchNorm2d)
    assert reference.load_state_dict(
        {k: v for k, v in ours.state_dict().items() if not k.startswith("fc.")}, strict=False
    ).missing_keys == ["fc.weight", "fc.bias"]
    ours.double()
    reference.double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    ours(x)["c5"].sum().backward()
    body = torch.nn.Sequential(*list(reference.children())[:-2])
    body(x).sum().backward()
    for name, param in ours.named_parameters():
        if not name.startswith("fc."):
            twin = reference.get_parameter(name)
            torch.testing.assert_close(param.grad, twin.grad)
