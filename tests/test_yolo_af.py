"""The anchor-free YOLO of plugin detkit_yolo: the task-aligned assigner against a slow
per-point, per-ground-truth loop, DFL decoding and loss by hand, empty images, BN folding
and channels-last, YOLOv8n's published size, fine-tuning rows, overfitting a few shapes
images, and the recipe from the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from detkit_yolo import CSPDarknet, YoloHead, dfl_decode, distribution_focal_loss, task_aligned_assign
from detkit_yolo.head import make_points

from detkit.backbones.fold import fold_frozen_batchnorm
from detkit.cli import main
from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.importers import CONFIG_DIR
from detkit.plugins import load_plugins
from detkit.structures import FeatureMaps, ImageBatch, Targets

# ---------------------------------------------------------------- the assigner


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_assign(pred_scores, pred_boxes, points, gts, *, topk, alpha, beta, eps=1e-9):
    """TOOD's assignment one image, one ground truth and one point at a time.

    ``gts``: per image a list of ``(box, label)``. Returns per image ``{point: (gt, t_hat)}``
    and counters of the cases met (points chosen by several ground truths, ground truths
    with more inside points than ``topk``).
    """
    results, contested, crowded = [], 0, 0
    pts = points.tolist()
    for scores, boxes, image_gts in zip(pred_scores.tolist(), pred_boxes.tolist(), gts):
        metric, iou, chosen = {}, {}, {}
        for g, (box, label) in enumerate(image_gts):
            inside = [p for p, (x, y) in enumerate(pts) if min(x - box[0], y - box[1], box[2] - x, box[3] - y) > eps]
            for p in inside:
                iou[g, p] = _iou(box, boxes[p])
                metric[g, p] = scores[p][label] ** alpha * iou[g, p] ** beta
            crowded += len(inside) > topk
            for p in sorted(inside, key=lambda p, g=g: (-metric[g, p], p))[:topk]:
                chosen.setdefault(p, []).append(g)
        owner = {}
        for p, by in chosen.items():
            contested += len(by) > 1
            owner[p] = max(by, key=lambda g, p=p: (iou[g, p], -g))  # highest IoU, then the lower index
        assigned = {}
        for g in range(len(image_gts)):
            mine = [p for p, o in owner.items() if o == g]
            if not mine:
                continue
            best_t = max(metric[g, p] for p in mine)
            best_u = max(iou[g, p] for p in mine)
            for p in mine:
                assigned[p] = (g, metric[g, p] * best_u / (best_t + eps))
        results.append(assigned)
    return results, contested, crowded


def _random_case(seed: int, gts_per_image: list[int], num_classes: int = 3):
    """Predictions around the points of a 64 x 64 image (strides 8, 16, 32) and random ground truths."""
    g = torch.Generator().manual_seed(seed)
    points, _ = make_points([(8, 8), (4, 4), (2, 2)], [8, 16, 32], device=torch.device("cpu"), dtype=torch.float64)
    n, p = len(gts_per_image), points.shape[0]
    centres = points + torch.randn(n, p, 2, generator=g, dtype=torch.float64) * 4
    sizes = torch.rand(n, p, 2, generator=g, dtype=torch.float64) * 32 + 8
    pred_boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1)
    pred_scores = torch.rand(n, p, num_classes, generator=g, dtype=torch.float64)
    gts = []
    for count in gts_per_image:
        image = []
        for _ in range(count):
            x0, y0 = (torch.rand(2, generator=g, dtype=torch.float64) * 40).tolist()
            w, h = (torch.rand(2, generator=g, dtype=torch.float64) * 36 + 12).tolist()
            label = int(torch.randint(num_classes, (1,), generator=g))
            image.append(([x0, y0, min(x0 + w, 64.0), min(y0 + h, 64.0)], label))
        gts.append(image)
    return pred_scores, pred_boxes, points, gts


def _padded(gts):
    num = max(len(image) for image in gts)
    boxes = torch.zeros(len(gts), num, 4, dtype=torch.float64)
    labels = torch.zeros(len(gts), num, dtype=torch.int64)
    mask = torch.zeros(len(gts), num, dtype=torch.bool)
    for i, image in enumerate(gts):
        for j, (box, label) in enumerate(image):
            boxes[i, j], labels[i, j], mask[i, j] = torch.tensor(box, dtype=torch.float64), label, True
    return boxes, labels, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assigner_matches_a_per_point_per_ground_truth_loop(seed):
    pred_scores, pred_boxes, points, gts = _random_case(seed, [4, 0, 7, 2])
    topk, alpha, beta = 4, 0.5, 6.0
    ours = task_aligned_assign(pred_scores, pred_boxes, points, *_padded(gts), topk=topk, alpha=alpha, beta=beta)
    expected, contested, crowded = reference_assign(pred_scores, pred_boxes, points, gts, topk=topk, alpha=alpha,
                                                    beta=beta)
    assert contested > 0 and crowded > 0  # the case exercises the top-k and the one-object-per-point rule
    for i, assigned in enumerate(expected):
        assert torch.nonzero(ours.foreground[i]).flatten().tolist() == sorted(assigned)
        for p, (g, t_hat) in assigned.items():
            box, label = gts[i][g]
            assert ours.gt_index[i, p] == g and ours.target_labels[i, p] == label
            assert ours.target_boxes[i, p].tolist() == pytest.approx(box)
            expected_scores = [0.0] * pred_scores.shape[-1]
            expected_scores[label] = t_hat
            assert ours.target_scores[i, p].tolist() == pytest.approx(expected_scores, abs=1e-12)
        background = ~ours.foreground[i]
        assert ours.target_scores[i][background].abs().sum() == 0


def test_assigner_without_ground_truths_is_all_background():
    pred_scores, pred_boxes, points, _ = _random_case(0, [0, 0])
    empty = (torch.zeros(2, 0, 4, dtype=torch.float64), torch.zeros(2, 0, dtype=torch.int64),
             torch.zeros(2, 0, dtype=torch.bool))
    result = task_aligned_assign(pred_scores, pred_boxes, points, *empty)
    assert not result.foreground.any() and result.target_scores.abs().sum() == 0
    assert result.target_scores.shape == pred_scores.shape


# ---------------------------------------------------------------- DFL


def test_dfl_decode_of_a_one_hot_distribution_is_the_bin():
    logits = torch.full((5, 16), -1e4)
    bins = torch.tensor([0, 3, 7, 14, 15])
    logits[torch.arange(5), bins] = 0.0  # softmax: exactly one-hot
    assert dfl_decode(logits).tolist() == bins.float().tolist()


def test_head_decodes_one_hot_distributions_to_exact_boxes():
    head = YoloHead(in_channels=[8, 8], in_strides=[8, 16], num_classes=2, reg_max=16).eval()
    sides = [2, 5, 11, 0]  # left, top, right, bottom in bins (strides)
    for branch in head.box_branches:
        predictor = branch[-1]
        with torch.no_grad():
            predictor.weight.zero_()
            predictor.bias.fill_(-1e4)
            for side, b in enumerate(sides):
                predictor.bias[side * 16 + b] = 0.0  # side-major: side s, bin b
    features = FeatureMaps({"p3": torch.randn(1, 8, 4, 4), "p4": torch.randn(1, 8, 2, 2)}, {"p3": 8, "p4": 16})
    with torch.no_grad():
        _, pred_dist = head._predict(list(features.maps.values()))
    points, strides = make_points([(4, 4), (2, 2)], [8, 16], device=torch.device("cpu"), dtype=torch.float32)
    distances = dfl_decode(pred_dist)  # (1, P, 4)
    assert distances[0].tolist() == [[2.0, 5.0, 11.0, 0.0]] * 20
    # the point of level 1, row 1, column 0 sits at (8, 24); distances scale by its stride 16
    assert points[16 + 2].tolist() == [8.0, 24.0] and strides[16 + 2] == 16
    expected = torch.tensor([8 - 2 * 16, 24 - 5 * 16, 8 + 11 * 16, 24 + 0 * 16], dtype=torch.float32)
    from detkit_yolo.head import distances_to_boxes

    assert torch.equal(distances_to_boxes(distances, points, strides)[0, 18], expected)


def test_distribution_focal_loss_by_hand():
    logits = torch.tensor([[0.5, 1.0, -0.3, 2.0], [0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([1.3, 2.99])
    p = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits.tolist()]
    expected = [-(0.7 * math.log(p[0][1]) + 0.3 * math.log(p[0][2])),
                -(0.01 * math.log(p[1][2]) + 0.99 * math.log(p[1][3]))]
    assert distribution_focal_loss(logits, target).tolist() == pytest.approx(expected, rel=1e-5)
    # the loss is lowest for the distribution with all its mass on the two neighbouring bins, split 0.7 / 0.3
    best = torch.log(torch.tensor([[1e-9, 0.7, 0.3, 1e-9]]))
    assert distribution_focal_loss(best, target[:1]) < distribution_focal_loss(logits[:1], target[:1])
    assert dfl_decode(best).item() == pytest.approx(1.3, abs=1e-6)


# ---------------------------------------------------------------- empty images and inference


def _tiny_head(num_classes: int = 3) -> YoloHead:
    torch.manual_seed(0)
    return YoloHead(in_channels=[8, 8, 8], in_strides=[8, 16, 32], num_classes=num_classes, box_channels=16,
                    cls_channels=8, prior_image_size=64)


def _features(n: int) -> FeatureMaps:
    torch.manual_seed(1)
    maps = {f"p{k}": torch.randn(n, 8, 64 // 2**k, 64 // 2**k) for k in (3, 4, 5)}
    return FeatureMaps(maps, {f"p{k}": 2**k for k in (3, 4, 5)})


def _batch(n: int) -> ImageBatch:
    return ImageBatch(torch.zeros(n, 3, 64, 64), [(64, 64)] * n, [(64, 64)] * n)


def test_empty_images_give_finite_losses_that_lower_every_score():
    head = _tiny_head().train()
    _, losses = head(_batch(2), _features(2), [Targets(), Targets()])
    assert set(losses) == {"loss_yolo_cls", "loss_yolo_box", "loss_yolo_dfl"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_yolo_box"] == losses["loss_yolo_dfl"] == 0 and losses["loss_yolo_cls"] > 0
    sum(losses.values()).backward()
    for branch in head.cls_branches:
        # every target is 0: d loss / d bias = sum of sigmoids > 0, so a step lowers every class score
        assert (branch[-1].bias.grad > 0).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in head.parameters())


def test_a_batch_with_an_empty_image_trains_every_term():
    head = _tiny_head().train()
    targets = [Targets(boxes=torch.tensor([[8.0, 10.0, 40.0, 30.0]]), labels=torch.tensor([2])), Targets()]
    _, losses = head(_batch(2), _features(2), targets)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
    assert head.box_branches[0][-1].weight.grad.abs().sum() > 0


def test_inference_returns_well_formed_raw_detections():
    head = _tiny_head().eval()
    head.topk_candidates = 50
    with torch.no_grad():
        dets, losses = head(_batch(2), _features(2))
    assert losses == {} and len(dets) == 2
    for d in dets:
        assert d.boxes.shape == (50, 4) and d.labels.dtype == torch.int64
        assert ((d.boxes >= 0) & (d.boxes <= 64)).all() and ((d.scores > 0) & (d.scores < 1)).all()
        assert (d.scores[:-1] >= d.scores[1:]).all() and ((d.labels >= 0) & (d.labels < 3)).all()
    # the class prior: 5 objects on a 64 px image of (64 / s)^2 points, 3 classes
    for branch, stride in zip(head.cls_branches, [8, 16, 32]):
        assert branch[-1].bias.tolist() == pytest.approx([math.log(5 / 3 / (64 / stride) ** 2)] * 3)


def _shapes_config(*overrides: str) -> dict:
    return load_config(CONFIG_DIR / "shapes_yolo.yaml", list(overrides))


def test_detector_on_a_blank_image_returns_valid_detections():
    torch.manual_seed(0)
    model = build_detector(_shapes_config(), load_plugins().registry, num_classes=4).eval()
    with torch.no_grad():
        dets, _ = model([torch.zeros(3, 100, 150)])
    assert len(dets) == 1
    d = dets[0]
    assert d.boxes.shape == (len(d), 4) and d.scores.shape == (len(d),) and d.labels.dtype == torch.int64
    assert torch.isfinite(d.boxes).all() and (d.boxes[:, 0::2] <= 150).all() and (d.boxes[:, 1::2] <= 100).all()


# ---------------------------------------------------------------- architecture, folding, channels-last, fine-tuning


def test_size_n_at_80_classes_has_yolov8n_parameter_count():
    """Ultralytics' yolov8n: 3,157,200 parameters, 16 of them the fixed DFL expectation weights."""
    config = load_config(CONFIG_DIR / "yolo.yaml", ["model.dense_head.cls_channels=80"])
    with torch.device("meta"):
        model = build_detector(config, load_plugins().registry, num_classes=80)
    assert sum(p.numel() for p in model.parameters()) == 3_157_200 - 16
    backbone = model.backbone
    assert isinstance(backbone, CSPDarknet)
    assert backbone.out_channels == {"c3": 64, "c4": 128, "c5": 256}
    assert backbone.out_strides == {"c3": 8, "c4": 16, "c5": 32}


def test_backbone_and_neck_maps_follow_their_declared_channels_and_strides():
    torch.manual_seed(0)
    model = build_detector(_shapes_config(), load_plugins().registry, num_classes=4).eval()
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        for part, features in [(model.backbone, model.backbone(x)), (model.neck, model.extract_features(x))]:
            assert features.names() == list(part.out_channels) == list(part.out_strides)
            for name, stride in part.out_strides.items():
                assert features[name].shape == (2, part.out_channels[name], 96 // stride, 128 // stride)


def _randomize_frozen_norms(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if hasattr(m, "scale_and_shift"):
            n = m.weight.shape[0]
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def test_frozen_norms_fold_and_channels_last_keep_the_detections():
    config = _shapes_config("model.backbone.norm=frozen_bn", "model.neck.norm=frozen_bn",
                            "model.dense_head.norm=frozen_bn", "model.postprocess.score_thresh=0.0")
    torch.manual_seed(0)
    model = build_detector(config, load_plugins().registry, num_classes=4).eval()
    _randomize_frozen_norms(model)
    images = [torch.rand(3, 128, 128)]
    with torch.no_grad():
        before, _ = model(images)
        folded = fold_frozen_batchnorm(model)
        after, _ = model(images)
        model.use_channels_last()
        nhwc, _ = model(images)
    assert folded == sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None) - 6
    assert not any(hasattr(m, "scale_and_shift") for m in model.modules())
    for other in (after, nhwc):
        assert torch.allclose(other[0].scores[:20], before[0].scores[:20], atol=1e-4)
        assert torch.allclose(other[0].boxes[:20], before[0].boxes[:20], atol=1e-2)


def test_frozen_stages_keep_their_statistics_in_training():
    backbone = CSPDarknet(size="n", width=0.125, frozen_stages=2).train()
    frozen = list(backbone.stages.values())[:2]
    assert all(not m.training for stage in frozen for m in stage.modules())
    assert all(not p.requires_grad for stage in frozen for p in stage.parameters())
    assert backbone.stages["c3"].training


def test_class_rows_cover_each_levels_classifier():
    head = _tiny_head(num_classes=5)
    state = head.state_dict()
    rows = head.class_rows()
    assert len(rows) == 6
    for name, layout in rows.items():
        assert state[name].shape[0] == layout.size(5) == 5


def test_finetuning_to_other_classes_keeps_the_shared_rows(tmp_path):
    from detkit.engine.checkpoint import save_checkpoint
    from detkit.engine.transfer import init_weights

    registry = load_plugins().registry
    torch.manual_seed(0)
    source = build_detector(_shapes_config(), registry, num_classes=4)
    path = tmp_path / "source.pt"
    names = ["circle", "square", "triangle", "ellipse"]
    save_checkpoint(path, model=source, config=_shapes_config(), class_names=names)
    target = build_detector(_shapes_config(), registry, num_classes=2)
    init_weights(target, str(path), class_names=["triangle", "star"])
    for level in range(3):
        old = source.dense_head.cls_branches[level][-1].weight
        new = target.dense_head.cls_branches[level][-1].weight
        assert torch.equal(new[0], old[2])  # triangle kept its row
    assert torch.equal(target.backbone.stages["c3"][0].conv.weight, source.backbone.stages["c3"][0].conv.weight)


# ---------------------------------------------------------------- learning and the CLI


@pytest.mark.slow
def test_overfits_a_few_shapes_images(tmp_path):
    """The untrained model scores nothing on 4 shapes images (17 objects); 200 steps memorize them.

    AP50 after training for train.seed 0 / 1 / 2: 1.00 / 0.95 / 0.95 (AP 0.96 / 0.95 / 0.95)
    on an Intel Xeon, 0.84 / 0.79 / 0.95 (AP 0.84 / 0.76 / 0.95) on an AMD EPYC, whose
    oneDNN kernels round differently; 150 steps: 0.79 (seed 0, Xeon); SGD at the same lr:
    0.43. 20-30 s on one core.
    """
    from detkit.engine.build import build_dataset, model_from_config, plugins_for
    from detkit.engine.evaluate import evaluate_dataset
    from detkit.engine.run import run_training

    data = tmp_path / "data"
    same_images = [f"root={data}", "split=train", "num_train=4", "num_val=0"]
    config = _shapes_config(
        *(f"data.{split}.{kv}" for split in ("train", "val") for kv in same_images),
        "data.augment.hflip=0", "train.device=cpu", "train.seed=0", "train.threads=1", "train.batch_size=4",
        "train.lr=0.01", "train.max_iters=200", "train.epochs=200", "train.max_minutes=null", "train.warmup_iters=10",
        "train.eval_period=0", "train.ema=null", "eval.batch_size=4", f"output.dir={tmp_path / 'run'}",
    )
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        plugins = plugins_for(config)
        val_set = build_dataset(config, "val", plugins)
        untrained = model_from_config(config, plugins, class_names=val_set.class_names)
        before = evaluate_dataset(untrained, val_set, batch_size=4, progress=False)
        after = run_training(config, [], progress=False)
    finally:
        torch.set_num_threads(threads)
    assert before["bbox"]["AP50"] < 0.05, before["bbox"]
    assert after["bbox"]["AP50"] >= 0.75 and after["bbox"]["AP"] >= 0.65, after["bbox"]


def test_train_from_the_cli_then_detect(tmp_path):
    out, data = tmp_path / "run", tmp_path / "data"
    overrides = [
        f"data.train.root={data}", f"data.val.root={data}", "data.train.num_train=8", "data.train.num_val=4",
        "data.val.num_train=8", "data.val.num_val=4", "train.max_iters=2", "train.batch_size=4",
        "train.warmup_iters=1", f"output.dir={out}",
    ]
    assert main(["-q", "train", "detkit:shapes_yolo.yaml", *overrides, "--device", "cpu"]) == 0
    assert (out / "best.pt").is_file() and "bbox" in json.loads((out / "metrics.json").read_text())
    det = tmp_path / "det"
    assert main(["-q", "detect", "--weights", str(out / "best.pt"), "--out", str(det), "--score-thresh", "0",
                 "--no-draw", str(data / "val")]) == 0
    records = json.loads((det / "detections.json").read_text())
    assert isinstance(records, list) and records and {"bbox", "score", "category"} <= set(records[0])


@pytest.mark.parametrize("recipe", ["shapes_yolo.yaml", "bccd_yolo.yaml", "yolo.yaml"])
def test_recipes_build(recipe):
    config = load_config(CONFIG_DIR / recipe)
    assert config["model"]["dense_head"]["name"] == "yolo"
    with torch.device("meta"):
        model = build_detector(config, load_plugins().registry, num_classes=3)
    assert list(model.neck.out_strides.values()) == [8, 16, 32]
    assert Path(CONFIG_DIR / recipe).is_file()
