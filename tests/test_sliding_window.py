"""detkit_sliding_window: the sliding-window proposer, the OverFeat head and the pyramid detector."""

import math

import pytest
import torch
from detkit_sliding_window import (
    OverFeatHead,
    SlidingWindowProposer,
    build_sliding_window,
    label_windows,
    window_boxes,
)

from detkit.cli import main
from detkit.config import load_config
from detkit.detectors import DenseDetector
from detkit.engine.build import model_from_config, plugins_for
from detkit.importers import CONFIG_DIR
from detkit.ops import Matcher
from detkit.plugins import load_plugins
from detkit.structures import FeatureMaps, ImageBatch, Targets

CLASSES = ["circle", "square", "triangle", "ellipse"]
RECIPES = ["sliding_window.yaml", "shapes_sliding_window.yaml", "bccd_sliding_window.yaml"]


def _batch(*sizes: tuple[int, int]) -> ImageBatch:
    height = max((s[0] for s in sizes), default=8)
    width = max((s[1] for s in sizes), default=8)
    return ImageBatch(torch.zeros(len(sizes), 3, height, width), list(sizes), list(sizes))


def _as_set(boxes: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(round(v, 4) for v in row) for row in boxes.tolist()}


# --------------------------------------------------------------------------- proposer


def test_registered() -> None:
    registry = load_plugins(["detkit_sliding_window"], autoload=False).registry
    assert registry.get("proposer", "sliding_window").factory is SlidingWindowProposer
    assert registry.get("dense_head", "overfeat").factory is OverFeatHead
    assert registry.get("detector", "sliding_window").factory is build_sliding_window


def test_proposer_windows_by_hand() -> None:
    # 16 px squares at half-window stride on a 20 x 24 image: x1 in {0, 8}, y1 in {0, 8}, clipped at y = 20;
    # the 8 x 32 window (ratio 0.25) is wider than the image: one position along x, clipped to 24
    proposer = SlidingWindowProposer(sizes=[16], aspect_ratios=[1.0, 0.25], stride_fraction=0.5)
    (proposals,), losses = proposer(_batch((20, 24)), None)
    assert losses == {}
    squares = {(0, 0, 16, 16), (8, 0, 24, 16), (0, 8, 16, 20), (8, 8, 24, 20)}
    # 8 x 32: y1 in {0, 4, 8, 12} (stride 4 = half its height), each clipped to x2 = 24
    wide = {(0, y, 24, y + 8) for y in (0, 4, 8, 12)}
    assert _as_set(proposals.boxes) == {tuple(float(v) for v in b) for b in squares | wide}
    assert len(proposals) == 8
    # the origin window of each (size, ratio) group comes first (coarse-to-fine positions)
    assert proposals.boxes[0].tolist() == [0.0, 0.0, 16.0, 16.0]
    assert torch.all(proposals.objectness[:-1] > proposals.objectness[1:])


def _reference_windows(size_hw, sizes, ratios, stride_fraction):
    """The slow, obvious loop: every window position, clipped, duplicates removed."""
    height, width = size_hw
    boxes = set()
    for s in sizes:
        for r in ratios:
            w, h = s / math.sqrt(r), s * math.sqrt(r)
            sx, sy = stride_fraction * w, stride_fraction * h
            y = 0.0
            while True:
                x = 0.0
                while True:
                    box = (max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h))
                    if box[2] > box[0] and box[3] > box[1]:
                        boxes.add(tuple(round(v, 4) for v in box))
                    if x + w >= width - 1e-6:
                        break
                    x += sx
                if y + h >= height - 1e-6:
                    break
                y += sy
    return boxes


@pytest.mark.parametrize("size_hw", [(37, 53), (64, 48), (10, 10)])
def test_proposer_matches_slow_loop(size_hw) -> None:
    sizes, ratios = [12, 20, 40], [0.5, 1.0, 2.0]
    proposer = SlidingWindowProposer(sizes=sizes, aspect_ratios=ratios, stride_fraction=0.5)
    (proposals,), _ = proposer(_batch(size_hw), None)
    assert _as_set(proposals.boxes) == _reference_windows(size_hw, sizes, ratios, 0.5)
    assert len(proposals) == len(_as_set(proposals.boxes))  # no duplicates


def test_proposer_two_image_sizes_and_stride_px() -> None:
    proposer = SlidingWindowProposer(sizes=[8], aspect_ratios=[1.0], stride_px=4)
    small, large = proposer(_batch((16, 16), (16, 32)), None)[0]
    assert len(small) == 3 * 3 and len(large) == 3 * 7
    assert small.boxes[:, 2].max() <= 16 and large.boxes[:, 2].max() == 32
    assert proposer(_batch(), None)[0] == []


def test_proposer_max_proposals_keeps_coarse_first_and_spreads() -> None:
    full = SlidingWindowProposer(sizes=[8, 32], aspect_ratios=[1.0], stride_fraction=0.5)
    capped = SlidingWindowProposer(sizes=[8, 32], aspect_ratios=[1.0], stride_fraction=0.5, max_proposals=20)
    (all_windows,), _ = full(_batch((64, 64)), None)
    (first,), _ = capped(_batch((64, 64)), None)
    assert len(first) == 20 and torch.equal(first.boxes, all_windows.boxes[:20])
    side = first.boxes[:, 2] - first.boxes[:, 0]
    assert (side == 32).sum() == 9  # every 32 px window (3 x 3 positions) before any 8 px one
    small = first.boxes[side == 8]
    # the 11 small windows are spread over the image, not packed in the first rows
    assert small[:, 1].max() >= 32 and small[:, 0].max() >= 32


def test_proposer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="stride_fraction"):
        SlidingWindowProposer(stride_fraction=0.0)
    with pytest.raises(ValueError, match="sizes"):
        SlidingWindowProposer(sizes=[])


# --------------------------------------------------------------------------- head


def _head(**kwargs) -> OverFeatHead:
    args = dict(in_channels=[6], in_strides=[8], in_features=["c3"], num_classes=3, window_size=24, fc_channels=[10, 7])
    args.update(kwargs)
    return OverFeatHead(**args)


def test_fc_as_conv_equals_the_window_classifier() -> None:
    torch.manual_seed(0)
    head = _head()
    for p in head.parameters():  # non-trivial weights everywhere
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 6, 7, 9)
    logits, deltas, _ = head.predict(FeatureMaps({"c3": x}, {"c3": 8}))
    out_h, out_w = 7 - 3 + 1, 9 - 3 + 1
    assert logits.shape == (2, out_h * out_w, 4) and deltas.shape == (2, out_h * out_w, 4)
    for y, xx in [(0, 0), (2, 5), (4, 3)]:
        crop = x[:, :, y : y + 3, xx : xx + 3]  # (N, C, k, k)
        # oracle: the layers as a plain MLP on the flattened crop
        hidden = crop.flatten(1)
        for conv in [m for m in head.fc if isinstance(m, torch.nn.Conv2d)]:
            hidden = torch.relu(hidden @ conv.weight.flatten(1).t() + conv.bias)
        expected_logits = hidden @ head.cls_logits.weight.flatten(1).t() + head.cls_logits.bias
        expected_deltas = hidden @ head.bbox_deltas.weight.flatten(1).t() + head.bbox_deltas.bias
        location = y * out_w + xx
        torch.testing.assert_close(logits[:, location], expected_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(deltas[:, location], expected_deltas, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(head.classify(crop)[0], expected_logits, rtol=1e-4, atol=1e-4)


def test_window_geometry() -> None:
    # stride 8, 3 cells: location (0, 0) is centred on pixel 8, side 24 -> [-4, 20]
    windows = window_boxes((4, 5), stride=8, cells=3)
    assert windows.shape == (2 * 3, 4)
    assert windows[0].tolist() == [-4.0, -4.0, 20.0, 20.0]
    assert windows[1].tolist() == [4.0, -4.0, 28.0, 20.0]  # next column: + stride
    assert windows[3].tolist() == [-4.0, 4.0, 20.0, 28.0]  # next row
    assert window_boxes((2, 5), stride=8, cells=3).shape == (0, 4)


@pytest.mark.parametrize("scale", [2.0, 1.0, 0.5])
def test_pyramid_windows_are_window_size_over_scale(scale) -> None:
    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / "shapes_sliding_window.yaml")
    model = build_sliding_window(config["model"], load_plugins().registry, num_classes=4).eval()
    tensor = torch.zeros(1, 3, 128, 128)
    head = model.dense_head
    head.scales = [scale]
    with torch.no_grad():
        features = model.extract_features(tensor)
        logits, _, windows = head.predict(features)
    assert features.names() == (["c3"] if scale == 1.0 else ["c3@0"])
    assert features.image_scale(features.names()[0]) == (scale, scale)
    side = windows[:, 2] - windows[:, 0]
    torch.testing.assert_close(side, torch.full_like(side, head.window_size / scale))
    assert logits.shape[1] == windows.shape[0] > 0
    # the first window is centred on the centre of its cells, the next one a stride further
    first_x1 = ((head.cells - 1) / 2 * head.stride - head.window_size / 2) / scale
    torch.testing.assert_close(windows[0, :2], torch.full((2,), first_x1))
    torch.testing.assert_close(windows[1, 0] - windows[0, 0], torch.tensor(head.stride / scale))


def test_label_windows_by_hand() -> None:
    windows = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 with object 0 -> positive, class 2
            [0.0, 0.0, 10.0, 14.0],  # IoU 100/140 = 0.71 -> positive
            [0.0, 0.0, 10.0, 22.0],  # IoU 100/220 = 0.45 -> between: ignored
            [50.0, 50.0, 60.0, 60.0],  # nothing -> background
            [80.0, 80.0, 90.0, 90.0],  # inside the crowd box -> ignored
            [100.0, 0.0, 110.0, 10.0],  # centred outside the 100 x 96 image -> ignored
        ]
    )
    targets = Targets(
        boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0], [70.0, 70.0, 95.0, 95.0]]),
        labels=torch.tensor([2, 0]),
        iscrowd=torch.tensor([False, True]),
    )
    labels, gt_index = label_windows(windows, targets, (100, 96), matcher=Matcher(high=0.5, low=0.4))
    assert labels.tolist() == [3, 3, -1, 0, -1, -1]
    assert gt_index[:2].tolist() == [0, 0]
    # no objects: everything inside the image is background
    labels, _ = label_windows(windows, Targets(), (100, 96), matcher=Matcher(high=0.5, low=0.4))
    assert labels.tolist() == [0, 0, 0, 0, 0, -1]


def test_low_quality_matches_give_every_object_a_window() -> None:
    windows = torch.tensor([[0.0, 0.0, 16.0, 16.0], [16.0, 0.0, 32.0, 16.0]])
    targets = Targets(boxes=torch.tensor([[2.0, 2.0, 8.0, 8.0]]), labels=torch.tensor([1]))  # IoU 0.14
    strict, _ = label_windows(windows, targets, (16, 32), matcher=Matcher(high=0.5, low=0.1))
    loose, _ = label_windows(
        windows, targets, (16, 32), matcher=Matcher(high=0.5, low=0.1, allow_low_quality_matches=True)
    )
    assert strict.tolist() == [-1, 0] and loose.tolist() == [2, 0]


def test_losses_finite_with_and_without_objects() -> None:
    torch.manual_seed(0)
    head = _head().train()
    features = FeatureMaps({"c3": torch.randn(2, 6, 8, 8, requires_grad=True)}, {"c3": 8})
    images = _batch((64, 64), (56, 64))
    targets = [Targets(boxes=torch.tensor([[4.0, 4.0, 28.0, 30.0]]), labels=torch.tensor([1])), Targets()]
    detections, losses = head(images, features, targets)
    assert [len(d) for d in detections] == [0, 0] and set(losses) == {"loss_overfeat_cls", "loss_overfeat_box"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_overfeat_box"] > 0
    sum(losses.values()).backward()
    _, losses = head(images, features, [Targets(), Targets()])
    assert losses["loss_overfeat_box"] == 0 and torch.isfinite(losses["loss_overfeat_cls"])
    sum(losses.values()).backward()
    head.eval()
    detections, losses = head(images, features)
    assert losses == {} and len(detections) == 2
    for dets, (h, w) in zip(detections, images.image_sizes):
        assert len(dets) <= head.topk_candidates and dets.labels.max() < 3
        assert dets.boxes[:, 2].max() <= w and dets.boxes[:, 3].max() <= h


def test_head_on_a_map_smaller_than_the_window() -> None:
    head = _head().eval()
    detections, _ = head(_batch((16, 16)), FeatureMaps({"c3": torch.randn(1, 6, 2, 2)}, {"c3": 8}))
    assert len(detections[0]) == 0


def test_head_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of the stride"):
        _head(window_size=20)
    with pytest.raises(ValueError, match="in_feature"):
        _head(in_feature="c5")
    with pytest.raises(ValueError, match="train_scales"):
        _head(train_scales="some")


# --------------------------------------------------------------------------- detector


@pytest.mark.parametrize("recipe", RECIPES)
def test_detector_from_config_trains_and_predicts(recipe) -> None:
    torch.manual_seed(0)
    small = ["model.backbone.width=8", "model.dense_head.fc_channels=[16]", "model.preprocess.min_size=128",
             "model.preprocess.max_size=160"]
    config = load_config(CONFIG_DIR / recipe, small)
    plugins = plugins_for(config)
    plugins.hook.detkit_configure(config=config)
    model = model_from_config(config, plugins, class_names=CLASSES)
    assert isinstance(model, DenseDetector)
    images = [torch.rand(3, 96, 128), torch.rand(3, 128, 112)]
    model.train()
    targets = [Targets(boxes=torch.tensor([[10.0, 20.0, 50.0, 60.0]]), labels=torch.tensor([1])), Targets()]
    detections, losses = model(images, targets)
    assert [len(d) for d in detections] == [0, 0] and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        detections, losses = model(images)
    assert losses == {} and len(detections) == 2
    for dets, image in zip(detections, images):
        assert (dets.boxes[:, 2] <= image.shape[-1]).all() and (dets.boxes[:, 3] <= image.shape[-2]).all()


def test_train_then_detect_from_the_cli(tmp_path) -> None:
    out, data = tmp_path / "run", tmp_path / "data"
    overrides = [
        f"data.train.root={data}", f"data.val.root={data}", "data.train.num_train=4", "data.train.num_val=2",
        "data.val.num_train=4", "data.val.num_val=2", "train.max_iters=2", "train.batch_size=2",
        "train.warmup_iters=1", "train.max_minutes=null", f"output.dir={out}", "model.backbone.width=8",
    ]
    assert main(["-q", "train", str(CONFIG_DIR / "shapes_sliding_window.yaml"), *overrides, "--device", "cpu"]) == 0
    assert (out / "best.pt").is_file()
    assert main(["-q", "detect", "--weights", str(out / "best.pt"), "--out", str(tmp_path / "det"),
                 str(data / "val")]) == 0
    assert len(list((tmp_path / "det").glob("*.png"))) == 2
