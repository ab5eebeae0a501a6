"""MobileNetV3-Large and -Small against torchvision's ``mobilenet_v3_large``/``mobilenet_v3_small``.

Oracles: torchvision's models with seeded random weights and random batch-norm
statistics, saved and loaded with ``weights=`` (same logits, same maps as slices of its
``features``; the two maps its mobile FPN reads, through torchvision's own extractor);
the same network with its frozen batch norms folded.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import _mobilenet_extractor

import detkit.weights
from detkit import ConfigError
from detkit.backbones import build_backbone, list_backbones
from detkit.backbones.fold import fold_frozen_batchnorm
from detkit.backbones.mobilenet import ConvNormActivation, InvertedResidual, MobileNetV3, block_configs

ALL_STAGES = ["c1", "c2", "c3", "c4", "c5_entry", "c5"]

# stage -> (channels, stride, end index in torchvision's ``features``) for a 1.0-wide net
EXPECTED = {
    "large": {"c1": (16, 2, 2), "c2": (24, 4, 4), "c3": (40, 8, 7), "c4": (112, 16, 13),
              "c5_entry": (160, 32, 14), "c5": (960, 32, 17)},
    "small": {"c1": (16, 2, 1), "c2": (16, 4, 2), "c3": (24, 8, 4), "c4": (48, 16, 9),
              "c5_entry": (96, 32, 10), "c5": (576, 32, 13)},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _reference(arch: str, num_classes: int = 10, **options) -> nn.Module:
    """torchvision's MobileNetV3 with seeded random weights and non-trivial batch norms, in eval mode."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, f"mobilenet_v3_{arch}")(weights=None, num_classes=num_classes, **options)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def _saved(model: nn.Module, tmp_path, name: str = "weights.pth") -> str:
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("large", {}),
        ("small", {}),
        ("large", {"reduced_tail": True, "dilated": True}),
        ("small", {"width_mult": 0.75, "reduced_tail": True}),
    ],
)
@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
def test_torchvision_weights_give_torchvisions_logits(arch, options, norm, tmp_path):
    reference = _reference(arch, **options)
    ours = build_backbone(
        f"mobilenet_v3_{arch}", num_classes=10, weights=_saved(reference, tmp_path), norm=norm, frozen_stages=0,
        **options,
    ).eval()
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        torch.testing.assert_close(ours.classify(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["large", "small"])
def test_stages_are_slices_of_torchvisions_features(arch, tmp_path):
    reference = _reference(arch)
    ours = build_backbone(
        f"mobilenet_v3_{arch}", weights=_saved(reference, tmp_path), norm="bn", frozen_stages=0,
        out_features=ALL_STAGES[::-1],  # any order; returned finest first
    ).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = ours(x)
    expected = EXPECTED[arch]
    assert features.names() == ALL_STAGES == list(ours.out_channels) == list(ours.out_strides)
    assert ours.out_channels == {k: c for k, (c, _, _) in expected.items()}
    assert ours.out_strides == features.strides == {k: s for k, (_, s, _) in expected.items()}
    with torch.no_grad():
        for name, (channels, stride, end) in expected.items():
            assert features[name].shape == (2, channels, 64 // stride, 96 // stride), name
            torch.testing.assert_close(features[name], reference.features[:end](x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["large", "small"])
def test_c5_entry_and_c5_are_the_maps_torchvisions_mobile_fpn_reads(arch, tmp_path):
    reference = _reference(arch)
    body = _mobilenet_extractor(copy.deepcopy(reference), True, 6).body.eval()  # returns {'0': ..., '1': ...}
    ours = build_backbone(
        f"mobilenet_v3_{arch}", weights=_saved(reference, tmp_path), norm="bn", out_features=["c5_entry", "c5"]
    ).eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        theirs, mine = body(x), ours(x)
    torch.testing.assert_close(mine["c5_entry"], theirs["0"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine["c5"], theirs["1"], atol=1e-5, rtol=1e-5)


def test_dilated_tail_keeps_stride_16_and_the_size():
    trunk = build_backbone("mobilenet_v3_large", dilated=True, out_features=["c4", "c5_entry", "c5"])
    assert trunk.out_strides == {"c4": 16, "c5_entry": 16, "c5": 16}
    with torch.no_grad():
        features = trunk(torch.randn(1, 3, 64, 64))
    assert [features[k].shape[-2:] for k in features.names()] == [(4, 4)] * 3


def test_folding_frozen_batch_norms_keeps_the_outputs(tmp_path):
    reference = _reference("large")
    ours = build_backbone(
        "mobilenet_v3_large", num_classes=10, weights=_saved(reference, tmp_path), out_features=ALL_STAGES,
        norm_eps=1e-3,
    ).eval()
    folded = copy.deepcopy(ours)
    pairs = sum(isinstance(m, ConvNormActivation) for m in ours.modules())
    # the stem; 15 depthwise and 15 projection convs; 14 expansions (the first block has none); the last conv
    assert fold_frozen_batchnorm(folded) == pairs == 1 + 15 + 15 + 14 + 1
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        before, after = ours(x), folded(x)
        for name in ALL_STAGES:
            torch.testing.assert_close(after[name], before[name], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(folded.classify(x), reference(x), atol=1e-5, rtol=1e-4)


def test_frozen_stages_freeze_leading_features_and_keep_them_in_eval_mode():
    trunk = build_backbone("mobilenet_v3_large", norm="bn", frozen_stages=3)  # torchvision's detection default
    frozen = {n.split(".")[1] for n, p in trunk.named_parameters() if not p.requires_grad}
    assert frozen == {str(i) for i in range(7)}  # features.0-6: c1, c2, c3
    trunk.train()
    assert not trunk.features[6].training and trunk.features[7].training
    with pytest.raises(ConfigError, match="frozen_stages must be between 0 and 6"):
        build_backbone("mobilenet_v3_small", frozen_stages=7)
    with pytest.raises(ConfigError, match="unknown norm 'batch'"):
        build_backbone("mobilenet_v3_small", norm="batch")


def test_building_blocks_follow_the_tables():
    stem, configs, last_channel = block_configs("large", reduced_tail=True)
    assert (stem, len(configs), last_channel) == (16, 15, 640)
    assert [(c.in_channels, c.expanded, c.out) for c in configs[-3:]] == [(112, 672, 80), (80, 480, 80), (80, 480, 80)]
    model = MobileNetV3(arch="small", norm="bn")
    blocks = [m for m in model.features if isinstance(m, InvertedResidual)]
    assert len(blocks) == 11 and [b.stride for b in blocks].count(2) == 4
    assert [b.use_residual for b in blocks[:3]] == [False, False, True]


def test_imagenet_weights_are_torchvisions_file(tmp_path, monkeypatch):
    reference = _reference("small", num_classes=1000)  # a seeded random stand-in for the real file
    _saved(reference, tmp_path, "mobilenet_v3_small-047dcff4.pth")
    monkeypatch.setattr(detkit.weights, "CACHE_DIR", tmp_path)  # already downloaded: no network needed
    assert {"mobilenet_v3_large", "mobilenet_v3_small"} <= set(list_backbones())
    ours = build_backbone("mobilenet_v3_small", weights="imagenet", num_classes=1000, norm="bn").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.classify(x), reference(x), atol=1e-5, rtol=1e-5)
