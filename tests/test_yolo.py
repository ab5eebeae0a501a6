"""The YOLO dense heads of detkit_single_shot: grid assignment and targets computed by hand,
the loss weights, empty images, decoding hand-set predictions, and the CLI recipes."""

import json
import math

import pytest
import torch
from detkit_single_shot.yolo import (
    YoloGridHead,
    YoloV1Head,
    assign_to_anchors,
    decode_yolo_v1_boxes,
    yolo_v1_loss,
    yolo_v1_targets,
)

from detkit.cli import main
from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.importers import CONFIG_DIR
from detkit.plugins import load_plugins
from detkit.structures import FeatureMaps, ImageBatch, Targets

# ---------------------------------------------------------------- YOLOv1: targets


def test_v1_targets_cell_offsets_and_sqrt_sizes():
    # 70 x 140 image, S = 7: cells are 20 px wide and 10 px high
    gt_boxes = torch.tensor([
        [25.0, 12.0, 45.0, 20.0],  # centre (35, 16): column 1.75, row 1.6
        [30.0, 15.0, 40.0, 17.0],  # same centre, smaller: the larger object keeps the cell
        [0.0, 0.0, 140.0, 70.0],  # centre (70, 35): column 3.5, row 3.5
    ])
    t = yolo_v1_targets(gt_boxes, torch.tensor([0, 1, 2]), grid_size=7, image_size=(70, 140), num_classes=3)
    assert torch.nonzero(t.has_object).tolist() == [[1, 1], [3, 3]]
    expected = torch.tensor([0.75, 0.6, math.sqrt(20 / 140), math.sqrt(8 / 70)])
    assert torch.allclose(t.boxes[1, 1], expected)
    assert torch.allclose(t.boxes[3, 3], torch.tensor([0.5, 0.5, 1.0, 1.0]))
    assert t.classes[1, 1].tolist() == [1.0, 0.0, 0.0] and t.classes[3, 3].tolist() == [0.0, 0.0, 1.0]
    assert t.gt_boxes[1, 1].tolist() == gt_boxes[0].tolist()
    assert t.boxes[~t.has_object].abs().sum() == 0 and t.classes[~t.has_object].abs().sum() == 0


def _v1_case():
    """S = 2, B = 2, K = 2 on a 100 x 100 image; one object in cell (row 0, column 1)."""
    gt = torch.tensor([[60.0, 10.0, 90.0, 40.0]])  # centre (75, 25), 30 x 30
    targets = [yolo_v1_targets(gt, torch.tensor([1]), grid_size=2, image_size=(100, 100), num_classes=2)]
    pred_boxes = torch.zeros(1, 2, 2, 2, 4)
    pred_boxes[..., 2:] = 0.1
    # predictor 0: a 10 x 10 box at (55, 5), touching the object's corner only: IoU 0
    pred_boxes[0, 0, 1, 0] = torch.tensor([0.1, 0.1, math.sqrt(0.1), math.sqrt(0.1)])
    # predictor 1: a 20 x 20 box at (75, 25), inside the object: IoU 400 / 900
    pred_boxes[0, 0, 1, 1] = torch.tensor([0.5, 0.5, math.sqrt(0.2), math.sqrt(0.2)])
    pred_confidence = torch.zeros(1, 2, 2, 2)
    pred_classes = torch.full((1, 2, 2, 2), 0.5)
    return targets, pred_boxes, pred_confidence, pred_classes


def test_v1_responsible_predictor_has_the_highest_iou_and_learns_it_as_confidence():
    targets, pred_boxes, pred_confidence, pred_classes = _v1_case()
    assert targets[0].boxes[0, 1].tolist() == pytest.approx([0.5, 0.5, math.sqrt(0.3), math.sqrt(0.3)])
    pred_confidence[0, 0, 1] = torch.tensor([0.2, 4 / 9 + 0.1])  # predictor 1 is responsible, target 4/9
    pred_classes[0, 0, 1] = torch.tensor([0.7, 0.3])  # the object is class 1
    losses = yolo_v1_loss(pred_boxes, pred_confidence, pred_classes, targets, image_size=(100, 100))
    assert losses["loss_yolo_v1_obj"].item() == pytest.approx(0.1**2, rel=1e-4)
    # predictor 0 of the object's cell is a no-object predictor like every predictor elsewhere
    assert losses["loss_yolo_v1_noobj"].item() == pytest.approx(0.5 * 0.2**2, rel=1e-5)
    box_error = 2 * (math.sqrt(0.2) - math.sqrt(0.3)) ** 2  # x and y are exact
    assert losses["loss_yolo_v1_box"].item() == pytest.approx(5 * box_error, rel=1e-5)
    # classes only where there is an object: (0.7 - 0)^2 + (0.3 - 1)^2
    assert losses["loss_yolo_v1_cls"].item() == pytest.approx(0.98, rel=1e-5)


def _perfect_prediction():
    """The case of :func:`_v1_case` predicted exactly: every loss term is 0."""
    targets, pred_boxes, pred_confidence, pred_classes = _v1_case()
    pred_boxes[0, 0, 1, 1] = targets[0].boxes[0, 1]  # the object itself: IoU 1
    pred_confidence[0, 0, 1, 1] = 1.0
    pred_classes[0, 0, 1] = torch.tensor([0.0, 1.0])
    return targets, pred_boxes, pred_confidence, pred_classes


def test_v1_loss_weights_noobj_half_and_coordinates_five():
    targets, pred_boxes, pred_confidence, pred_classes = _perfect_prediction()
    perfect = yolo_v1_loss(pred_boxes, pred_confidence, pred_classes, targets, image_size=(100, 100))
    assert sum(perfect.values()).item() == pytest.approx(0.0, abs=1e-10)

    noobj = pred_confidence.clone()
    noobj[0, 1, 0, 1] = 0.3  # an error in a cell without object only
    losses = yolo_v1_loss(pred_boxes, noobj, pred_classes, targets, image_size=(100, 100))
    assert sum(losses.values()).item() == pytest.approx(0.5 * 0.3**2, rel=1e-5)
    assert losses["loss_yolo_v1_noobj"].item() == pytest.approx(0.5 * 0.3**2, rel=1e-5)

    shifted = pred_boxes.clone()
    shifted[0, 0, 1, 1, 0] += 0.1  # the responsible box's x is off by 0.1
    losses = yolo_v1_loss(shifted, pred_confidence, pred_classes, targets, image_size=(100, 100))
    assert losses["loss_yolo_v1_box"].item() == pytest.approx(5 * 0.1**2, rel=1e-4)

    doubled = yolo_v1_loss(shifted, noobj, pred_classes, targets, image_size=(100, 100),
                           lambda_coord=10.0, lambda_noobj=1.0)
    assert doubled["loss_yolo_v1_box"].item() == pytest.approx(10 * 0.1**2, rel=1e-4)
    assert doubled["loss_yolo_v1_noobj"].item() == pytest.approx(0.3**2, rel=1e-5)
    head = YoloV1Head(in_channels=[8], num_classes=2)
    assert (head.lambda_coord, head.lambda_noobj) == (5.0, 0.5)


# ---------------------------------------------------------------- YOLOv1: decoding


def test_v1_decode_hand_set_boxes():
    pred = torch.zeros(2, 2, 1, 4)  # S = 2, B = 1 on a 100 x 200 image: cells 100 wide, 50 high
    pred[1, 0, 0] = torch.tensor([0.25, 0.5, 0.5, math.sqrt(0.4)])  # row 1, column 0
    boxes = decode_yolo_v1_boxes(pred, (100, 200))
    # centre (0.25 * 100, (1 + 0.5) * 50) = (25, 75); size (0.25 * 200, 0.4 * 100) = (50, 40)
    assert torch.allclose(boxes[1, 0, 0], torch.tensor([0.0, 55.0, 50.0, 95.0]))


def _image_batch(n: int, size: int) -> ImageBatch:
    return ImageBatch(torch.zeros(n, 3, size, size), [(size, size)] * n, [(size, size)] * n)


def test_v1_head_inference_scores_are_confidence_times_class_probability():
    head = YoloV1Head(in_channels=[8], num_classes=2, grid_size=1, boxes_per_cell=1, hidden_channels=0,
                      fc_channels=0).eval()
    conv = head.predictor[-1]
    with torch.no_grad():
        conv.weight.zero_()
        # per cell (x, y, sqrt w, sqrt h, confidence, class 0, class 1) logits: sigmoid 0.5 each; softmax 1:3
        conv.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, math.log(3.0)]))
        features = FeatureMaps({"c5": torch.randn(1, 8, 4, 4)}, {"c5": 16})
        dets, losses = head(_image_batch(1, 64), features)
    assert losses == {} and len(dets) == 1
    # centre (0.5, 0.5) of the 64 px cell, size 0.5^2 of the image: 16 x 16
    assert dets[0].labels.tolist() == [1, 0]
    assert dets[0].scores.tolist() == pytest.approx([0.5 * 0.75, 0.5 * 0.25])
    assert torch.allclose(dets[0].boxes, torch.tensor([[24.0, 24.0, 40.0, 40.0]] * 2))


def test_v1_head_empty_images_only_noobj_terms():
    torch.manual_seed(0)
    head = YoloV1Head(in_channels=[8], num_classes=3, grid_size=3, hidden_channels=8, fc_channels=16).train()
    features = FeatureMaps({"c5": torch.randn(2, 8, 4, 4, requires_grad=True)}, {"c5": 16})
    dets, losses = head(_image_batch(2, 64), features, [Targets(), Targets()])
    assert [len(d) for d in dets] == [0, 0] and all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_yolo_v1_noobj"] > 0
    assert losses["loss_yolo_v1_box"] == losses["loss_yolo_v1_obj"] == losses["loss_yolo_v1_cls"] == 0
    sum(losses.values()).backward()
    assert features["c5"].grad is not None and head.predictor[-1].weight.grad.abs().sum() > 0
    head.eval()
    with torch.no_grad():
        dets, _ = head(_image_batch(2, 64), features)
    assert [len(d) for d in dets] == [3 * 3 * 2 * 3] * 2
    assert dets[0].boxes.shape == (18 * 3, 4) and dets[0].labels.dtype == torch.int64
    assert ((dets[0].scores >= 0) & (dets[0].scores <= 1)).all()


# ---------------------------------------------------------------- YOLOv3 grid: assignment


ANCHORS = torch.tensor([[[8.0, 8.0], [16.0, 8.0]], [[32.0, 32.0], [16.0, 32.0]]])  # (L=2, A=2, 2)
STRIDES, GRID_SIZES = [8, 16], [(8, 8), (4, 4)]  # a 64 x 64 image


def test_grid_assignment_best_anchor_over_all_levels_at_the_centre_cell():
    gt = torch.tensor([
        [20.0, 4.0, 36.0, 36.0],  # 16 x 32 at (28, 20): shape IoUs 1/8, 1/4, 1/2, 1 -> level 1, anchor 1
        [1.0, 2.0, 9.0, 14.0],  # 8 x 12 at (5, 8): shape IoUs 2/3, 2/5, 3/32, 3/16 -> level 0, anchor 0
    ])
    a = assign_to_anchors(gt, ANCHORS, STRIDES, GRID_SIZES)
    assert a.level.tolist() == [1, 0] and a.anchor.tolist() == [1, 0]
    # (28, 20) / 16 = (1.75, 1.25) -> column 1, row 1; (5, 8) / 8 = (0.625, 1.0) -> column 0, row 1
    assert a.cell.tolist() == [[1, 1], [0, 1]]
    assert torch.allclose(a.offsets, torch.tensor([[0.75, 0.25], [0.625, 0.0]]))
    assert torch.allclose(a.log_sizes, torch.tensor([[0.0, 0.0], [0.0, math.log(1.5)]]))
    # level 0 holds 8*8*2 predictions (row-major cells, anchors innermost), then level 1
    assert a.index.tolist() == [8 * 8 * 2 + (1 * 4 + 1) * 2 + 1, (1 * 8 + 0) * 2 + 0]


def _zero_grid_head(num_classes: int = 2) -> YoloGridHead:
    head = YoloGridHead(in_channels=[4, 4], num_classes=num_classes, anchor_sizes=ANCHORS.tolist(),
                        hidden_channels=0)
    with torch.no_grad():
        for predictor in head.predictors:
            assert isinstance(predictor, torch.nn.Sequential)
            conv = predictor[-1]
            assert isinstance(conv, torch.nn.Conv2d) and conv.bias is not None
            conv.weight.zero_()
            conv.bias.zero_()
    return head


def _grid_features(n: int = 1) -> FeatureMaps:
    return FeatureMaps({"p3": torch.zeros(n, 4, 8, 8), "p4": torch.zeros(n, 4, 4, 4)}, {"p3": 8, "p4": 16})


def test_grid_prediction_order_matches_the_assignment_index():
    head = _zero_grid_head()
    features = _grid_features()
    features.maps["p4"][0, 0, 1, 1] = 1.0  # a marker at level 1, row 1, column 1
    with torch.no_grad():
        head.predictors[1][-1].weight[1 * 7 + 4, 0] = 1.0  # anchor 1's objectness reads it
        pred = head._predict(list(features.maps.values()))
    assert pred.shape == (1, 8 * 8 * 2 + 4 * 4 * 2, 7)
    assert torch.nonzero(pred[0, :, 4]).flatten().tolist() == [8 * 8 * 2 + (1 * 4 + 1) * 2 + 1]


def test_grid_decode_hand_set_prediction():
    head = _zero_grid_head()
    deltas = torch.zeros(1, 8 * 8 * 2 + 4 * 4 * 2, 4)
    index = 8 * 8 * 2 + (1 * 4 + 1) * 2 + 1  # level 1 (stride 16), row 1, column 1, anchor (16, 32)
    deltas[0, index] = torch.tensor([0.0, math.log(0.25 / 0.75), math.log(2.0), 0.0])
    boxes = head.decode(deltas, GRID_SIZES, STRIDES)
    # centre ((1 + 0.5) * 16, (1 + 0.25) * 16) = (24, 20); size (16 * 2, 32 * 1)
    assert torch.allclose(boxes[0, index], torch.tensor([8.0, 4.0, 40.0, 36.0]), atol=1e-5)
    # a zero prediction is the anchor centred in its cell: level 0, row 0, column 0, anchor (16, 8)
    assert torch.allclose(boxes[0, 1], torch.tensor([-4.0, 0.0, 12.0, 8.0]))


def _grid_prior_boxes() -> torch.Tensor:
    """Every anchor centred in its cell, one at a time: what a zero prediction decodes to."""
    boxes = []
    for anchors, stride, (h, w) in zip(ANCHORS.tolist(), STRIDES, GRID_SIZES):
        for row in range(h):
            for col in range(w):
                for aw, ah in anchors:
                    cx, cy = (col + 0.5) * stride, (row + 0.5) * stride
                    boxes.append([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2])
    return torch.tensor(boxes)


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_grid_losses_ignore_overlapping_unassigned_predictions():
    head = _zero_grid_head().train()  # every logit 0: each objectness BCE term is log 2
    gt = [12.0, 6.0, 36.0, 38.0]  # 24 x 32 at (24, 22): level 1 (32 x 32), row 1, column 1
    targets = [Targets(boxes=torch.tensor([gt]), labels=torch.tensor([1]))]
    _, losses = head(_image_batch(1, 64), _grid_features(), targets)
    assigned = 8 * 8 * 2 + (1 * 4 + 1) * 2 + 0
    ignored = [i for i, box in enumerate(_grid_prior_boxes().tolist()) if _iou(box, gt) > 0.5 and i != assigned]
    assert assigned + 1 in ignored  # the cell's other anchor, 16 x 32, overlaps it at IoU 0.6
    num_predictions = 8 * 8 * 2 + 4 * 4 * 2
    assert losses["loss_yolo_grid_obj"].item() == pytest.approx((num_predictions - len(ignored)) * math.log(2))
    assert losses["loss_yolo_grid_cls"].item() == pytest.approx(2 * math.log(2))  # two class BCEs at logit 0
    # offsets (0.5, 0.375) as BCE at logit 0 (log 2 each); log sizes (log 0.75, 0), predicted 0
    assert losses["loss_yolo_grid_box"].item() == pytest.approx(2 * math.log(2) + math.log(0.75) ** 2)


def test_grid_empty_images_objectness_only_and_detections_well_formed():
    torch.manual_seed(0)
    head = YoloGridHead(in_channels=[4, 4], num_classes=2, anchor_sizes=ANCHORS.tolist(), hidden_channels=4).train()
    features = FeatureMaps({"p3": torch.randn(2, 4, 8, 8), "p4": torch.randn(2, 4, 4, 4)}, {"p3": 8, "p4": 16})
    _, losses = head(_image_batch(2, 64), features, [Targets(), Targets()])
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_yolo_grid_obj"] > 0
    assert losses["loss_yolo_grid_cls"] == losses["loss_yolo_grid_box"] == 0
    sum(losses.values()).backward()
    assert head.predictors[0][-1].weight.grad is not None
    head.eval()
    with torch.no_grad():
        dets, losses = head(_image_batch(2, 64), features)
    assert losses == {} and [len(d) for d in dets] == [(8 * 8 * 2 + 4 * 4 * 2) * 2] * 2
    assert dets[1].boxes.shape[1] == 4 and dets[1].labels.dtype == torch.int64
    assert (dets[1].boxes >= 0).all() and (dets[1].boxes <= 64).all()


def test_grid_head_needs_one_anchor_level_per_map():
    with pytest.raises(ValueError, match="anchor_sizes lists 2 levels"):
        YoloGridHead(in_channels=[4, 4, 4], num_classes=2, anchor_sizes=ANCHORS.tolist())


# ---------------------------------------------------------------- registration, recipes, the CLI


def test_plugin_registers_the_yolo_heads_and_full_configs_build():
    registry = load_plugins().registry
    for name in ["yolo_v1", "yolo_grid"]:
        assert registry.get("dense_head", name).plugin == "detkit_single_shot"
    with torch.device("meta"):
        v1 = build_detector(load_config(CONFIG_DIR / "yolo_v1.yaml"), registry, num_classes=20)
        grid = build_detector(load_config(CONFIG_DIR / "yolo_grid.yaml"), registry, num_classes=80)
    assert (v1.dense_head.grid_size, v1.dense_head.boxes_per_cell) == (7, 2)
    assert tuple(grid.dense_head.anchors.shape) == (3, 3, 2)


@pytest.mark.parametrize("recipe", ["shapes_yolo_v1.yaml", "shapes_yolo_grid.yaml"])
def test_train_shapes_yolo_from_the_cli_then_detect(recipe, tmp_path):
    out, data = tmp_path / "run", tmp_path / "data"
    overrides = [
        f"data.train.root={data}", f"data.val.root={data}", "data.train.num_train=8", "data.train.num_val=4",
        "data.val.num_train=8", "data.val.num_val=4", "train.max_iters=3", "train.batch_size=4",
        "train.warmup_iters=1", f"output.dir={out}",
    ]
    assert main(["-q", "train", str(CONFIG_DIR / recipe), *overrides, "--device", "cpu"]) == 0
    assert (out / "best.pt").is_file() and "bbox" in json.loads((out / "metrics.json").read_text())
    det, no_thresh = tmp_path / "det", tmp_path / "no_thresh.yaml"
    no_thresh.write_text("model:\n  postprocess: {score_thresh: 0.0}\n")  # 3 iterations: low scores
    assert main(["-q", "detect", "--weights", str(out / "best.pt"), "--config", str(no_thresh), "--out", str(det),
                 "--score-thresh", "0", "--no-draw", str(data / "val")]) == 0
    records = json.loads((det / "detections.json").read_text())
    assert isinstance(records, list) and records
    assert {"bbox", "score", "category"} <= set(records[0])
