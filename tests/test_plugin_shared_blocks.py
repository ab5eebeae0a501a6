"""Plugins build on :mod:`detkit.backbones` rather than on copies of it: SSDlite's MobileNetV3-Large
trunk (``detkit.backbones``' blocks with SSDlite's batch norm) and YOLO's frozen batch norm
(``detkit.backbones.FrozenBatchNorm2d`` with YOLO's eps).

The oracles: torchvision's ``ssdlite320_mobilenet_v3_large`` backbone for the trunk's layout at
widths the parity tests of ``tests/test_ssdlite.py`` leave out, and ``nn.BatchNorm2d`` in eval
mode for the frozen norm.
"""

import pytest
import torch
import torchvision
from detkit_single_shot import SSDLiteMobileNetV3
from detkit_yolo.layers import make_norm
from torch import nn

from detkit.backbones import FrozenBatchNorm2d


@pytest.mark.parametrize(("width_mult", "reduced_tail"), [(0.5, True), (1.0, False)])
def test_ssdlite_trunk_has_torchvisions_layout_and_norms(width_mult, reduced_tail):
    """Every trunk tensor has torchvision's name and shape; every batch norm eps 0.001, momentum 0.03."""
    # ssdlite320_mobilenet_v3_large's own steps (it takes the full tail only with a backbone file)
    torchvision_backbone = torchvision.models.mobilenet_v3_large(
        width_mult=width_mult, reduced_tail=reduced_tail,
        norm_layer=lambda c: nn.BatchNorm2d(c, eps=0.001, momentum=0.03),
    )
    ours = SSDLiteMobileNetV3(width_mult=width_mult, reduced_tail=reduced_tail)
    theirs = torchvision.models.detection.ssdlite._mobilenet_extractor(
        torchvision_backbone, trainable_layers=6, norm_layer=nn.BatchNorm2d
    )
    ours_features = {k: tuple(v.shape) for k, v in ours.state_dict().items() if k.startswith("features.")}
    theirs_features = {k: tuple(v.shape) for k, v in theirs.state_dict().items() if k.startswith("features.")}
    assert ours_features == theirs_features
    norms = [m for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 0.001 and m.momentum == 0.03 for m in norms)


def test_yolo_frozen_bn_is_detkits_with_yolos_eps_and_equals_batch_norm_in_eval():
    frozen = make_norm("frozen_bn", 8)
    assert isinstance(frozen, FrozenBatchNorm2d) and frozen.eps == 1e-3
    bn = nn.BatchNorm2d(8, eps=1e-3, momentum=0.03)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(8, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(8, generator=gen))
        bn.running_mean.copy_(torch.randn(8, generator=gen))
        bn.running_var.copy_(torch.rand(8, generator=gen) * 0.01 + 1e-4)  # small: eps 1e-3 vs 1e-5 shows
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped
    x = torch.randn(2, 8, 5, 7, generator=gen)
    with torch.no_grad():
        assert torch.allclose(frozen(x), bn.eval()(x), atol=1e-5)
