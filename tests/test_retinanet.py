"""The detkit_dense_heads plugin's RetinaNet: anchors, torchvision parity (detections and losses), empty
images, P6/P7, and a small recipe that learns.

The oracle is torchvision's retinanet_resnet50_fpn on the same seeded random weights (see
tests/_dense_heads.py for what is done to them), imported with `detkit import-torchvision`.
"""

from __future__ import annotations

import pytest
import torch
from _dense_heads import (
    assert_python_detections_match,
    cli_detect_matches_torchvision,
    imported_training_losses,
    torchvision_model,
)
from _parity import real_photo
from detkit_dense_heads import AnchorGrid, RetinaNetHead, octave_sizes
from test_learning import tiny_run_overrides, train_and_score
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detkit import ConfigError
from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.importers import CONFIG_DIR
from detkit.plugins import load_plugins
from detkit.structures import Targets

NAME = "retinanet_resnet50_fpn"


# ---------------------------------------------------------------- anchors


def test_anchors_equal_torchvision_on_a_padded_batch_with_odd_strides():
    """RetinaNet's 9 anchors on P3-P7 of an 800 x 1216 batch: P6 and P7 have 13 and 7 rows (strides 61, 114)."""
    sizes = octave_sizes([32, 64, 128, 256, 512])
    assert sizes[0] == [32, 40, 50] and sizes[-1] == [512, 645, 812]
    padded, grids = (800, 1216), [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]
    ours = AnchorGrid(sizes=sizes, aspect_ratios=[0.5, 1.0, 2.0])(grids, padded, torch.device("cpu"))
    tv = AnchorGenerator(tuple(tuple(s) for s in sizes), ((0.5, 1.0, 2.0),) * 5)
    features = [torch.zeros(1, 1, h, w) for h, w in grids]
    theirs = tv(ImageList(torch.zeros(1, 3, *padded), [padded]), features)[0]
    assert torch.equal(torch.cat(ours), theirs)
    assert [len(a) for a in ours] == [h * w * 9 for h, w in grids]


def test_head_checks_levels_and_channels():
    with pytest.raises(ConfigError, match="5 size tuples but the neck gives 4"):
        RetinaNetHead(in_channels=[64] * 4, num_classes=3)
    with pytest.raises(ConfigError, match="one channel count"):
        RetinaNetHead(in_channels=[64, 64, 64, 64, 32], num_classes=3)
    config = load_config(CONFIG_DIR / "shapes_retinanet.yaml", ["model.neck.extra_level=p6p8"])
    with pytest.raises(ConfigError, match="extra_level"):
        build_detector(config, load_plugins().registry, num_classes=3)


# ---------------------------------------------------------------- torchvision parity


@pytest.fixture(scope="module")
def torchvision_retinanet(tmp_path_factory):
    return torchvision_model(NAME, tmp_path_factory.mktemp("tv"), logit_scale=3.0)


def test_import_and_detect_on_a_photo_match_torchvision(torchvision_retinanet, shared_data, tmp_path):
    """The recipe's 800 px resize, P3-P7, 1000 candidates per level, class-wise NMS; a threshold that cuts."""
    tv_model, tv_file = torchvision_retinanet
    count = cli_detect_matches_torchvision(
        NAME, tv_model, tv_file, real_photo(shared_data, tmp_path), tmp_path, score_thresh=0.11
    )
    assert 0 < count < 300  # the threshold keeps some, not all of the 300


def test_imported_model_matches_exactly_in_python(torchvision_retinanet, tmp_path):
    """No rounding, a non-square image, every detection (threshold 0: 300 kept)."""
    tv_model, tv_file = torchvision_retinanet
    assert_python_detections_match(NAME, tv_model, tv_file, tmp_path, count=300)


def test_training_losses_match_torchvision(torchvision_retinanet, tmp_path):
    """Matching (low-quality matches, ignored anchors), focal loss and L1 box loss on the same images."""
    tv_model, tv_file = torchvision_retinanet
    theirs, mine = imported_training_losses(NAME, tv_model, tv_file, tmp_path)
    assert set(mine) == {"loss_retinanet_cls", "loss_retinanet_box"}
    assert torch.allclose(mine["loss_retinanet_cls"], theirs["classification"], rtol=1e-5)
    assert torch.allclose(mine["loss_retinanet_box"], theirs["bbox_regression"], rtol=1e-5)
    assert mine["loss_retinanet_box"] > 0


# ---------------------------------------------------------------- the small recipe


@pytest.fixture(scope="module")
def tiny_retinanet():
    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / "shapes_retinanet.yaml")
    return build_detector(config, load_plugins().registry, num_classes=3)


def test_empty_images_give_finite_losses_and_valid_detections(tiny_retinanet):
    model = tiny_retinanet.train()
    images = [torch.rand(3, 100, 140), torch.rand(3, 128, 128)]
    dets, losses = model(images, [Targets(), Targets()])
    assert [len(d) for d in dets] == [0, 0] and set(losses) == {"loss_retinanet_cls", "loss_retinanet_box"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_retinanet_box"] == 0
    sum(losses.values()).backward()
    assert torch.isfinite(model.dense_head.cls_logits.weight.grad).all()
    _, losses = model(images, [Targets(boxes=torch.tensor([[10.0, 20.0, 60.0, 80.0]]), labels=torch.tensor([2])),
                               Targets()])
    assert losses["loss_retinanet_box"] > 0
    model.eval()
    with torch.no_grad():
        dets, losses = model([torch.rand(3, 90, 200), torch.zeros(3, 64, 64)])
    assert losses == {} and len(dets) == 2
    for d, (h, w) in zip(dets, [(90, 200), (64, 64)]):
        assert d.boxes.shape == (len(d), 4) and d.labels.dtype == torch.int64
        assert (d.boxes[:, 2] <= w).all() and (d.boxes[:, 3] <= h).all() and (d.scores > 0.05).all()


#: Steps of the overfitting test: AP50 1.00 / 1.00 / 1.00 after them for train.seed 0 / 1 / 2 (untrained 0.00), ~20 s.
STEPS = 150


@pytest.mark.slow
def test_recipe_overfits_a_few_shapes_images(tmp_path):
    config = load_config(
        CONFIG_DIR / "shapes_retinanet.yaml", tiny_run_overrides(tmp_path, images=4, steps=STEPS, seed=0)
    )
    before, after, _ = train_and_score(config)
    assert before["bbox"]["AP50"] < 0.05, before["bbox"]
    assert after["bbox"]["AP50"] >= 0.8, after["bbox"]

