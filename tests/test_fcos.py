"""The detkit_dense_heads plugin's FCOS: assignment, distance coding, torchvision parity (detections and
losses), empty images, and a small recipe that learns.

The oracle is torchvision's fcos_resnet50_fpn on the same seeded random weights (see
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
from detkit_dense_heads import FCOSHead, decode_distances, encode_distances, fcos_assign
from test_learning import tiny_run_overrides, train_and_score
from torchvision.models.detection._utils import BoxLinearCoder

from detkit import ConfigError
from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.importers import CONFIG_DIR
from detkit.plugins import load_plugins
from detkit.structures import Targets

NAME = "fcos_resnet50_fpn"
#: Steps of the overfitting test: AP50 0.95 / 0.95 / 0.95 after them for train.seed 0 / 1 / 2 (untrained 0.00), ~20 s.
STEPS = 150
#: The photo test's score threshold: the random model's 100 detections on the photo score about 0.56-0.63.
THRESH = 0.58


# ---------------------------------------------------------------- assignment and coding


def _references(points, size):
    """Square reference boxes of side ``size`` centred on ``points``."""
    points = torch.tensor(points, dtype=torch.float32)
    return torch.cat([points - size / 2, points + size / 2], dim=1)


def test_assignment_centre_sampling_size_ranges_and_smallest_object():
    """Two levels (s = 8 and 16): ranges (0, 64) and (64, inf), centre radius 1.5 s."""
    big = [0.0, 0.0, 200.0, 100.0]  # all three centred on (100, 50)
    medium = [70.0, 20.0, 130.0, 80.0]
    small = [90.0, 40.0, 110.0, 60.0]
    gt = torch.tensor([big, medium, small])
    level0 = _references([[100, 50], [112, 50], [88, 62], [300, 50]], 8)
    level1 = _references([[100, 50], [120, 50], [100, 80]], 16)
    matches = fcos_assign(gt, torch.cat([level0, level1]), [4, 3], center_sampling_radius=1.5)
    # level 0, (100, 50): longest distances 100 (big: out of range), 30 and 10: medium and small
    # qualify, the smaller wins; (112, 50) and (88, 62) are outside small, and 12 (not < 1.5 * 8)
    # off the others' centre; (300, 50) is outside everything.
    # level 1: (100, 50) and (120, 50) (20 < 24 off the centre) take big, the only object whose
    # longest distance (100, 120) is above 64; (100, 80) is 30 >= 24 off in y.
    assert matches.tolist() == [2, -1, -1, -1, 0, 0, -1]
    empty = fcos_assign(torch.zeros((0, 4)), level0, [4], center_sampling_radius=1.5)
    assert empty.tolist() == [-1] * 4


def test_distance_coding_inverts_and_equals_torchvision():
    references = _references([[10, 20], [50, 60], [5, 5]], 8)
    boxes = torch.tensor([[0.0, 5.0, 30.0, 40.0], [45.0, 50.0, 70.0, 61.0], [1.0, 2.0, 9.0, 8.0]])
    coder = BoxLinearCoder(normalize_by_size=True)
    distances = encode_distances(references, boxes)
    assert torch.allclose(distances, coder.encode(references, boxes))
    assert torch.allclose(distances[0], torch.tensor([10.0, 15.0, 20.0, 20.0]) / 8)
    assert torch.allclose(decode_distances(distances, references), boxes, atol=1e-5)
    assert torch.equal(decode_distances(distances, references), coder.decode(distances, references))


def test_head_checks_levels_and_norm_groups():
    with pytest.raises(ConfigError, match="5 sizes but the neck gives 3"):
        FCOSHead(in_channels=[64] * 3, num_classes=3)
    with pytest.raises(ConfigError, match="32 groups"):
        FCOSHead(in_channels=[48] * 5, num_classes=3)
    assert len(FCOSHead(in_channels=[48] * 5, num_classes=3, norm="none").cls_tower) == 8


# ---------------------------------------------------------------- torchvision parity


@pytest.fixture(scope="module")
def torchvision_fcos(tmp_path_factory):
    return torchvision_model(NAME, tmp_path_factory.mktemp("tv"), logit_scale=3.0)


def test_import_and_detect_on_a_photo_match_torchvision(torchvision_fcos, shared_data, tmp_path):
    """The recipe's 800 px resize, sqrt(class * centerness) scores, 1000 per level, NMS 0.6, 100 kept."""
    tv_model, tv_file = torchvision_fcos
    count = cli_detect_matches_torchvision(
        NAME, tv_model, tv_file, real_photo(shared_data, tmp_path), tmp_path, score_thresh=THRESH
    )
    assert 0 < count < 100  # the threshold keeps some, not all of the 100


def test_imported_model_matches_exactly_in_python(torchvision_fcos, tmp_path):
    """No rounding, a non-square image, every detection (threshold 0: 100 kept)."""
    tv_model, tv_file = torchvision_fcos
    assert_python_detections_match(NAME, tv_model, tv_file, tmp_path, count=100)


def test_training_losses_match_torchvision(torchvision_fcos, tmp_path):
    """Centre sampling, size ranges, smallest-object rule; focal, GIoU and centerness losses."""
    tv_model, tv_file = torchvision_fcos
    theirs, mine = imported_training_losses(NAME, tv_model, tv_file, tmp_path)
    assert set(mine) == {"loss_fcos_cls", "loss_fcos_box", "loss_fcos_centerness"}
    assert torch.allclose(mine["loss_fcos_cls"], theirs["classification"], rtol=1e-5)
    assert torch.allclose(mine["loss_fcos_box"], theirs["bbox_regression"], rtol=1e-5)
    assert torch.allclose(mine["loss_fcos_centerness"], theirs["bbox_ctrness"], rtol=1e-5)
    assert mine["loss_fcos_box"] > 0


# ---------------------------------------------------------------- the small recipe


@pytest.fixture(scope="module")
def tiny_fcos():
    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / "shapes_fcos.yaml")
    return build_detector(config, load_plugins().registry, num_classes=3)


def test_empty_images_give_finite_losses_and_valid_detections(tiny_fcos):
    model = tiny_fcos.train()
    images = [torch.rand(3, 100, 140), torch.rand(3, 128, 128)]
    dets, losses = model(images, [Targets(), Targets()])
    assert [len(d) for d in dets] == [0, 0]
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_box", "loss_fcos_centerness"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_fcos_box"] == 0 and losses["loss_fcos_centerness"] == 0
    sum(losses.values()).backward()
    assert torch.isfinite(model.dense_head.cls_logits.weight.grad).all()
    _, losses = model(images, [Targets(boxes=torch.tensor([[10.0, 20.0, 60.0, 80.0]]), labels=torch.tensor([2])),
                               Targets()])
    assert losses["loss_fcos_box"] > 0 and losses["loss_fcos_centerness"] > 0
    model.eval()
    with torch.no_grad():
        dets, losses = model([torch.rand(3, 90, 200), torch.zeros(3, 64, 64)])
    assert losses == {} and len(dets) == 2
    for d, (h, w) in zip(dets, [(90, 200), (64, 64)]):
        assert d.boxes.shape == (len(d), 4) and d.labels.dtype == torch.int64
        assert (d.boxes[:, 2] <= w).all() and (d.boxes[:, 3] <= h).all() and (d.scores > 0.05).all()


@pytest.mark.slow
def test_recipe_overfits_a_few_shapes_images(tmp_path):
    config = load_config(CONFIG_DIR / "shapes_fcos.yaml", tiny_run_overrides(tmp_path, images=4, steps=STEPS, seed=0))
    before, after, _ = train_and_score(config)
    assert before["bbox"]["AP50"] < 0.05, before["bbox"]
    assert after["bbox"]["AP50"] >= 0.8, after["bbox"]

