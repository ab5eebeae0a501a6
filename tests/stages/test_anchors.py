"""Anchors on hand-computable cases, against torchvision's generator, and level-count errors."""

from pathlib import Path

import pytest
import torch
from detkit_rpn.anchors import AnchorGenerator
from detkit_rpn.rpn import RPN
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detkit import ConfigError
from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.ops import cell_anchors
from detkit.plugins import load_plugins
from detkit.structures import FeatureMaps, ImageBatch

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_cell_anchors_hand_computed():
    # ratio h/w = 1: a 32x32 square; ratio 4: w = 16, h = 64 (area kept at 32**2)
    anchors = cell_anchors([32], [1.0, 4.0])
    assert anchors.tolist() == [[-16, -16, 16, 16], [-8, -32, 8, 32]]


def test_anchor_grid_order_and_shifts():
    gen = AnchorGenerator(sizes=[[8]], aspect_ratios=[[1.0]])
    (anchors,) = gen([(2, 3)], [(16, 16)], torch.device("cpu"))
    # location-major over rows then columns, shifted by the stride
    expected = [[x * 16 - 4, y * 16 - 4, x * 16 + 4, y * 16 + 4] for y in range(2) for x in range(3)]
    assert anchors.tolist() == expected


def test_anchor_counts_per_level():
    gen = AnchorGenerator(sizes=[[32], [64]], aspect_ratios=[0.5, 1.0, 2.0])
    levels = gen([(4, 4), (2, 2)], [(8, 8), (16, 16)], torch.device("cpu"))
    assert [a.shape[0] for a in levels] == [4 * 4 * 3, 2 * 2 * 3]
    assert gen.num_anchors_per_location() == [3, 3]


@pytest.mark.parametrize(
    "sizes",
    [((32,), (64,), (128,), (256,), (512,)), ((24, 32), (48, 64), (96, 128), (192, 256), (384, 512))],
    ids=["one-size-per-level", "two-sizes-per-level"],
)
def test_anchors_equal_torchvision(sizes):
    ratios = (0.5, 1.0, 2.0)
    padded = (96, 160)  # an FPN's p2..p6 grids of a padded batch
    grids = [(padded[0] // s, padded[1] // s) for s in (4, 8, 16, 32, 64)]
    maps = [torch.zeros(1, 1, h, w) for h, w in grids]
    reference = TorchvisionAnchorGenerator(sizes, (ratios,) * len(sizes))(
        ImageList(torch.zeros(1, 3, *padded), [padded]), maps
    )[0]
    strides = [(padded[0] // h, padded[1] // w) for h, w in grids]
    ours = AnchorGenerator(sizes=sizes, aspect_ratios=ratios)(grids, strides, torch.device("cpu"))
    assert torch.equal(torch.cat(ours), reference)


@pytest.mark.parametrize("num_sizes, num_maps", [(5, 4), (3, 5)])
def test_generator_refuses_a_level_count_mismatch(num_sizes, num_maps):
    gen = AnchorGenerator(sizes=[[8 * 2**i] for i in range(num_sizes)])
    grids = [(32 >> i, 32 >> i) for i in range(num_maps)]
    strides = [(4 << i, 4 << i) for i in range(num_maps)]
    with pytest.raises(ConfigError, match=rf"{num_sizes} anchor size tuples for {num_maps} feature maps"):
        gen(grids, strides, torch.device("cpu"))


def pyramid(num_maps: int, size: int = 64) -> tuple[ImageBatch, FeatureMaps]:
    """An image batch and ``num_maps`` FPN-like maps ``p2, p3, ...`` of 8 channels."""
    names = [f"p{2 + i}" for i in range(num_maps)]
    strides = {name: 4 << i for i, name in enumerate(names)}
    maps = {name: torch.zeros(1, 8, size // s, size // s) for name, s in strides.items()}
    return ImageBatch(torch.zeros(1, 3, size, size), [(size, size)], [(size, size)]), FeatureMaps(maps, strides)


@pytest.mark.parametrize("num_sizes, num_maps", [(5, 4), (3, 5)])
def test_rpn_forward_names_both_counts_the_maps_and_the_keys(num_sizes, num_maps):
    rpn = RPN(in_channels=8, anchor_sizes=[[8 * 2**i] for i in range(num_sizes)]).eval()
    batch, features = pyramid(num_maps)
    with pytest.raises(ConfigError) as info:
        rpn(batch, features)
    message = str(info.value)
    assert f"model.proposer.anchor_sizes has {num_sizes} size tuples" in message
    assert f"gives {num_maps} feature maps ({', '.join(features.names())})" in message
    assert "model.backbone, model.neck" in message and "one size tuple per feature map" in message
    suggested = ", ".join(f"[{8 * 2**i}]" for i in range(num_maps))
    assert f"e.g. model.proposer.anchor_sizes=[{suggested}]" in message
    assert ("model.proposer.in_features" in message) == (num_sizes < num_maps)
    assert "\n" not in message


@pytest.mark.parametrize("num_sizes, num_maps", [(5, 4), (3, 5)])
def test_rpn_refuses_a_mismatch_at_build_when_it_knows_the_maps(num_sizes, num_maps):
    sizes = [[8 * 2**i] for i in range(num_sizes)]
    _, features = pyramid(num_maps)
    with pytest.raises(ConfigError, match=rf"has {num_sizes} size tuples but .* {num_maps} feature maps"):
        RPN(in_channels=8, anchor_sizes=sizes, in_strides=features.strides)
    with pytest.raises(ConfigError, match=rf"has {num_sizes} size tuples but model.proposer.in_features selects "
                                          rf"{num_maps} feature maps"):
        RPN(in_channels=8, anchor_sizes=sizes, in_features=features.names())
    with pytest.raises(ConfigError, match=r"in_features names p9, which the backbone/neck does not give"):
        RPN(in_channels=8, anchor_sizes=sizes[:1], in_features=["p9"], in_strides=features.strides)


def test_rpn_with_matching_levels_runs():
    batch, features = pyramid(4)
    rpn = RPN(in_channels=8, anchor_sizes=[[8], [16], [32], [64]], in_strides=features.strides).eval()
    proposals, _ = rpn(batch, features)
    assert len(proposals) == 1 and proposals[0].boxes.shape[1] == 4


def test_detector_from_config_with_one_size_too_many_is_refused_when_built():
    # the shapes recipe's FPN gives p2..p6; six anchor sizes cannot be paired with them, and the
    # builder hands the RPN the neck's strides, so the mistake is caught before any image is read
    config = load_config(
        CONFIGS / "shapes_faster_rcnn.yaml", ["model.proposer.anchor_sizes=[[8], [16], [32], [64], [128], [256]]"]
    )
    message = r"has 6 size tuples but .* 5 feature maps \(p2, p3, p4, p5, p6\)"
    with pytest.raises(ConfigError, match=message):
        build_detector(config, load_plugins(autoload=False).registry, num_classes=4)
