"""VGG's and MobileNetV3's fresh weights are torchvision's at the same seed (one shared He fan-out init)."""

import pytest
import torch
import torchvision

from detkit.backbones import mobilenet_v3_small, vgg11_bn


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: vgg11_bn(num_classes=10, frozen_stages=0), lambda: torchvision.models.vgg11_bn(num_classes=10)),
        (
            lambda: mobilenet_v3_small(num_classes=10, norm="bn", frozen_stages=0),
            lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
        ),
    ],
    ids=["vgg11_bn", "mobilenet_v3_small"],
)
def test_fresh_weights_equal_torchvisions(ours, theirs):
    torch.manual_seed(0)
    state = ours().state_dict()
    torch.manual_seed(0)
    reference = theirs().state_dict()
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(state[key], value), key
