"""ResNet backbone and FPN against torchvision with the same weights."""

from collections import OrderedDict

import pytest
import torch
import torchvision
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detkit.backbones import FPN, ResNet
from detkit.structures import FeatureMaps


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_loads_torchvision_weights_and_gives_the_same_logits_and_stages(depth, tmp_path):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=10).eval()
    path = tmp_path / "resnet.pth"
    torch.save(reference.state_dict(), path)
    ours = ResNet(depth=depth, norm="bn", num_classes=10, weights=str(path), frozen_stages=0).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(ours.classify(x), reference(x), atol=1e-4)
        stages = ours(x)
        y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        for i, name in enumerate(["c2", "c3", "c4", "c5"]):
            y = getattr(reference, f"layer{i + 1}")(y)
            assert torch.allclose(stages[name], y, atol=1e-4), name
    expected_channels = [64, 128, 256, 512] if depth == 18 else [256, 512, 1024, 2048]
    assert list(ours.out_channels.values()) == expected_channels
    assert ours.out_strides == {"c2": 4, "c3": 8, "c4": 16, "c5": 32}


def test_resnet_parameter_counts_match_torchvision():
    for depth in (18, 34, 50):
        ours = ResNet(depth=depth, norm="bn", num_classes=1000, frozen_stages=0)
        theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_frozen_stages_and_frozen_batch_norm():
    model = ResNet(depth=18, norm="frozen_bn", frozen_stages=2)
    assert not any(p.requires_grad for p in model.conv1.parameters())
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    assert not list(model.bn1.parameters())  # statistics and affine terms are buffers


def test_fpn_matches_torchvision_feature_pyramid():
    torch.manual_seed(0)
    channels = {"c2": 8, "c3": 16, "c4": 32, "c5": 64}
    strides = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
    ours = FPN(in_channels=channels, in_strides=strides, out_channels=12)
    theirs = FeaturePyramidNetwork(list(channels.values()), 12, extra_blocks=LastLevelMaxPool())
    for i in range(4):
        theirs.inner_blocks[i][0].load_state_dict(ours.lateral_convs[i].state_dict())
        theirs.layer_blocks[i][0].load_state_dict(ours.output_convs[i].state_dict())
    inputs = {k: torch.randn(1, c, 64 // strides[k], 80 // strides[k]) for k, c in channels.items()}
    out = ours(FeatureMaps(inputs, strides))
    ref = theirs(OrderedDict(inputs))
    assert out.names() == ["p2", "p3", "p4", "p5", "p6"]
    assert out.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    for name, ref_name in zip(out.names(), ref):
        assert torch.allclose(out[name], ref[ref_name], atol=1e-5)


def test_fpn_with_norm_has_no_conv_bias_and_runs():
    fpn = FPN(in_channels={"c4": 8, "c5": 16}, in_strides={"c4": 16, "c5": 32}, out_channels=8, norm="gn")
    out = fpn(FeatureMaps({"c4": torch.randn(2, 8, 4, 4), "c5": torch.randn(2, 16, 2, 2)}, {"c4": 16, "c5": 32}))
    assert out.names() == ["p4", "p5", "p6"] and out["p6"].shape == (2, 8, 1, 1)
    assert all(m.bias is None for m in fpn.modules() if isinstance(m, torch.nn.Conv2d))
