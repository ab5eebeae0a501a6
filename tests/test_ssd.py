"""The detkit_single_shot plugin: SSD's default boxes, matching, hard negatives, empty images,
torchvision parity of the imported ssd300_vgg16, and a small recipe trained from the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch
import torchvision
from _parity import (
    assert_json_detections_equal,
    blurred_image,
    cutting_threshold,
    detect_photo,
    import_torchvision,
    real_photo,
    training_losses,
)
from detkit_single_shot import DefaultBoxes, hard_negative_mask, match_default_boxes
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

from detkit.cli import main
from detkit.config import load_config
from detkit.data.images import image_to_tensor, read_image
from detkit.detectors import build_detector
from detkit.importers import CONFIG_DIR
from detkit.plugins import load_plugins
from detkit.structures import Targets

# ---------------------------------------------------------------- default boxes


def _direct_default_boxes(aspect_ratios, scales, steps, grid_sizes, image_size):
    """One box at a time, straight from the paper's definition (xyxy pixels)."""
    img_h, img_w = image_size
    boxes = []
    for k, (h, w) in enumerate(grid_sizes):
        s, s_next = scales[k], scales[k + 1]
        sizes = [(s, s), (math.sqrt(s * s_next),) * 2]
        for r in aspect_ratios[k]:
            sizes += [(s * math.sqrt(r), s / math.sqrt(r)), (s / math.sqrt(r), s * math.sqrt(r))]
        for i in range(h):
            for j in range(w):
                if steps is None:
                    cx, cy = (j + 0.5) / w, (i + 0.5) / h
                else:
                    cx, cy = (j + 0.5) * steps[k] / img_w, (i + 0.5) * steps[k] / img_h
                for bw, bh in sizes:
                    bw, bh = min(bw, 1.0), min(bh, 1.0)
                    boxes.append([(cx - bw / 2) * img_w, (cy - bh / 2) * img_h,
                                  (cx + bw / 2) * img_w, (cy + bh / 2) * img_h])
    return torch.tensor(boxes, dtype=torch.float64)


@pytest.mark.parametrize("steps", [None, [16, 40]])
def test_default_boxes_match_a_direct_computation_and_torchvision(steps):
    aspect_ratios, scales = [[2], [2, 3]], [0.2, 0.5, 1.1]  # 1.1: the extra box of map 1 is clipped
    grid_sizes, image_size = [(3, 4), (1, 2)], (48, 64)
    ours = DefaultBoxes(aspect_ratios=aspect_ratios, scales=scales, steps=steps)(grid_sizes, image_size)
    assert ours.shape == (3 * 4 * 4 + 1 * 2 * 6, 4)
    direct = _direct_default_boxes(aspect_ratios, scales, steps, grid_sizes, image_size)
    assert torch.allclose(ours.double(), direct, atol=1e-4)
    tv = DefaultBoxGenerator(aspect_ratios, scales=scales, steps=steps)
    features = [torch.zeros(1, 1, h, w) for h, w in grid_sizes]
    theirs = tv(ImageList(torch.zeros(1, 3, *image_size), [image_size]), features)[0]
    assert torch.equal(ours, theirs)


def test_default_boxes_linear_scales_and_counts():
    boxes = DefaultBoxes(aspect_ratios=[[2], [2, 3], [2]], min_ratio=0.2, max_ratio=0.8)
    assert boxes.scales == pytest.approx([0.2, 0.5, 0.8, 1.0])
    assert boxes.num_per_location() == [4, 6, 4]
    with pytest.raises(ValueError, match="scales needs 4"):
        DefaultBoxes(aspect_ratios=[[2], [2, 3], [2]], scales=[0.1, 0.2])


# ---------------------------------------------------------------- matching and mining


def test_matching_forces_each_ground_truth_best_box():
    default_boxes = torch.tensor(
        [[0, 0, 10, 10], [0, 0, 10, 20], [20, 20, 30, 30], [100, 100, 110, 110]], dtype=torch.float32
    )
    gt = torch.tensor([[0, 0, 10, 10], [21, 21, 40, 40]], dtype=torch.float32)
    # box 1 overlaps gt 0 at IoU 0.5 exactly (matched); box 2 overlaps gt 1 at 81/380 < 0.5
    # but is gt 1's best box, so it is forced; box 3 overlaps nothing
    matches = match_default_boxes(gt, default_boxes, iou_thresh=0.5)
    assert matches.tolist() == [0, 0, 1, -1]
    empty = match_default_boxes(torch.zeros((0, 4)), default_boxes, iou_thresh=0.5)
    assert empty.tolist() == [-1, -1, -1, -1]


def test_hard_negative_mining_keeps_three_per_positive_highest_loss_first():
    loss = torch.tensor([
        [9.0, 0.1, 5.0, 0.3, 4.0, 0.2, 3.0, 0.4, 2.0, 0.5],  # 1 positive (box 0, the highest loss)
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],  # 3 positives: 9 wanted, only 7 negatives
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],  # no positive: no negative
    ])
    fg = torch.zeros_like(loss, dtype=torch.bool)
    fg[0, 0] = True
    fg[1, [0, 5, 9]] = True
    kept = hard_negative_mask(loss, fg, neg_to_pos_ratio=3.0)
    assert torch.where(kept[0])[0].tolist() == [2, 4, 6]  # the three highest-loss negatives
    assert torch.equal(kept[1], ~fg[1])  # all seven negatives
    assert not kept[2].any()
    assert not (kept & fg).any()


# ---------------------------------------------------------------- tiny model: losses, empty images


@pytest.fixture(scope="module")
def tiny_ssd():
    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / "shapes_ssd.yaml")
    return build_detector(config, load_plugins().registry, num_classes=3)


def test_losses_with_objects_and_with_empty_images(tiny_ssd):
    tiny_ssd.train()
    images = [torch.rand(3, 100, 140), torch.rand(3, 128, 128)]
    targets = [
        Targets(boxes=torch.tensor([[10.0, 20.0, 60.0, 80.0]]), labels=torch.tensor([2])),
        Targets(),  # an empty image: every default box is background
    ]
    dets, losses = tiny_ssd(images, targets)
    assert [len(d) for d in dets] == [0] * len(images) and set(losses) == {"loss_ssd_cls", "loss_ssd_box"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_ssd_box"] > 0
    sum(losses.values()).backward()
    assert tiny_ssd.dense_head.cls_logits[0].weight.grad is not None

    tiny_ssd.zero_grad()
    _, losses = tiny_ssd(images, [Targets(), Targets()])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_ssd_box"] == 0  # no positive, hence (3 x 0) no mined negative either
    sum(losses.values()).backward()


def test_inference_returns_detections_in_original_pixels_or_none(tiny_ssd):
    tiny_ssd.eval()
    with torch.no_grad():
        dets, losses = tiny_ssd([torch.rand(3, 90, 200)])
        assert losses == {} and len(dets) == 1
        assert (dets[0].boxes[:, 2] <= 200).all() and (dets[0].boxes[:, 3] <= 90).all()
        tiny_ssd.postprocess.score_thresh = 1.0  # nothing can pass
        try:
            empty, _ = tiny_ssd([torch.rand(3, 64, 64), torch.rand(3, 128, 96)])
        finally:
            tiny_ssd.postprocess.score_thresh = 0.05
    assert [len(d) for d in empty] == [0, 0]
    assert empty[0].boxes.shape == (0, 4) and empty[0].labels.dtype == torch.int64


def test_single_stage_needs_a_square_fixed_size():
    config = load_config(CONFIG_DIR / "shapes_ssd.yaml", ["model.preprocess.max_size=160"])
    with pytest.raises(Exception, match="fixed square"):
        build_detector(config, load_plugins().registry, num_classes=3)


# ---------------------------------------------------------------- torchvision parity


@pytest.fixture(scope="module")
def torchvision_ssd(tmp_path_factory):
    """torchvision's ssd300_vgg16 with random weights (fixed seed), and its state-dict file."""
    torch.manual_seed(0)
    model = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None).eval()
    path = tmp_path_factory.mktemp("tv") / "ssd300.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def imported_ssd(torchvision_ssd, tmp_path_factory):
    from detkit.engine.build import load_model

    ckpt = import_torchvision("ssd300_vgg16", torchvision_ssd[1], tmp_path_factory.mktemp("dk") / "ssd300.pt")
    return load_model(ckpt, overrides=["model.postprocess.score_thresh=0.0"])[0].model


def test_imported_ssd_matches_torchvision_exactly_in_python(torchvision_ssd, imported_ssd):
    """No rounding, a non-square image, every detection (score_thresh 0, 200 kept)."""
    tv_model, _ = torchvision_ssd
    tv_model.eval().score_thresh = 0.0
    imported_ssd.eval()
    image = blurred_image(240, 351, seed=1)
    with torch.no_grad():
        ours = imported_ssd([image])[0][0]
        theirs = tv_model([image])[0]
    assert len(ours) == len(theirs["boxes"]) == 200
    assert torch.allclose(ours.boxes, theirs["boxes"], atol=1e-3)
    assert torch.allclose(ours.scores, theirs["scores"], atol=1e-5)
    assert torch.equal(ours.labels + 1, theirs["labels"])


def test_imported_ssd_training_losses_match_torchvision(torchvision_ssd, imported_ssd):
    """Matching, hard negative mining and both losses against torchvision's SSD.compute_loss."""
    tv_model, _ = torchvision_ssd
    boxes = [
        torch.tensor([[10.0, 20.0, 200.0, 180.0], [150.0, 5.0, 340.0, 90.0]]),
        torch.tensor([[30.0, 40.0, 90.0, 250.0]]),
    ]
    labels = [torch.tensor([0, 16]), torch.tensor([61])]  # detkit labels; torchvision's are + 1
    theirs, ours = training_losses(tv_model, imported_ssd, boxes, labels)
    assert torch.allclose(ours["loss_ssd_cls"], theirs["classification"], rtol=1e-5)
    assert torch.allclose(ours["loss_ssd_box"], theirs["bbox_regression"], rtol=1e-5)
    assert ours["loss_ssd_box"] > 0 and ours["loss_ssd_cls"] > 0


def test_import_and_detect_match_torchvision_ssd300(torchvision_ssd, shared_data, tmp_path):
    photo = real_photo(shared_data, tmp_path)
    tv_model, tv_file = torchvision_ssd
    thresh, theirs = cutting_threshold(tv_model, image_to_tensor(read_image(photo)))
    ckpt = import_torchvision("ssd300_vgg16", tv_file, tmp_path / "detkit.pt")
    ours = detect_photo(ckpt, photo, tmp_path / "out", score_thresh=thresh)
    assert_json_detections_equal(ours, theirs, ckpt)


# ---------------------------------------------------------------- the CLI recipe


def test_train_shapes_ssd_from_the_cli_then_detect(tmp_path):
    out, data = tmp_path / "run", tmp_path / "data"
    overrides = [
        f"data.train.root={data}", f"data.val.root={data}", "data.train.num_train=8", "data.train.num_val=4",
        "data.val.num_train=8", "data.val.num_val=4", "train.max_iters=3", "train.batch_size=4",
        "train.warmup_iters=1", f"output.dir={out}",
    ]
    assert main(["-q", "train", str(CONFIG_DIR / "shapes_ssd.yaml"), *overrides, "--device", "cpu"]) == 0
    assert (out / "best.pt").is_file() and json.loads((out / "metrics.json").read_text())["bbox"]
    det = tmp_path / "det"
    assert main(["-q", "detect", "--weights", str(out / "best.pt"), "--out", str(det), "--score-thresh", "0",
                 str(data / "val")]) == 0
    records = json.loads((det / "detections.json").read_text())
    assert isinstance(records, list) and len(list(det.glob("*.png"))) == 4
    assert Path(det / "detections.json").is_file()


# ---------------------------------------------------------------- registration and the backbone


def test_plugin_registers_its_components():
    registry = load_plugins().registry
    for kind, name in [("detector", "single_stage"), ("dense_head", "ssd"), ("backbone", "ssd300_vgg16"),
                       ("importer", "ssd300_vgg16")]:
        assert registry.get(kind, name).plugin == "detkit_single_shot"


def test_ssd300_backbone_map_sizes():
    load_plugins()  # import the plugin outside the meta-device context
    from detkit_single_shot import SSDVGG

    with torch.device("meta"):
        backbone = SSDVGG()
        features = backbone(torch.zeros(2, 3, 300, 300))
    sides = {"conv4_3": 38, "fc7": 19, "extra0": 10, "extra1": 5, "extra2": 3, "extra3": 1}
    assert features.names() == list(sides) == list(backbone.out_channels)
    for name, side in sides.items():
        assert features[name].shape == (2, backbone.out_channels[name], side, side), name
    assert backbone.out_channels == {"conv4_3": 512, "fc7": 1024, "extra0": 512, "extra1": 256, "extra2": 256,
                                     "extra3": 256}


def test_single_stage_with_a_resnet_and_fpn_neck_trains_and_detects():
    """The detector is not SSD-VGG specific: any backbone, an optional neck, per-map channels."""
    config = load_config(CONFIG_DIR / "shapes_ssd.yaml", [
        "model.backbone={name: resnet18, width: 16, out_features: [c3, c4, c5]}",
        "model.neck={name: fpn, out_channels: 32, extra_level: true}",
        "model.dense_head.steps=[8, 16, 32, 64]",
    ])
    torch.manual_seed(0)
    model = build_detector(config, load_plugins().registry, num_classes=3)
    assert model.neck is not None
    model.train()
    target = Targets(boxes=torch.tensor([[10.0, 20.0, 60.0, 80.0]]), labels=torch.tensor([1]))
    _, losses = model([torch.rand(3, 128, 128)], [target])
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        dets, _ = model([torch.rand(3, 128, 128)])
    assert len(dets) == 1 and dets[0].boxes.shape[1] == 4
