"""train.init_weights across class sets: kept tensors equal the file's, class rows follow class names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.engine.checkpoint import save_checkpoint
from detkit.engine.transfer import class_rows_of, init_weights
from detkit.errors import CheckpointError
from detkit.importers import CONFIG_DIR
from detkit.plugins import load_plugins
from detkit.stages import ClassRows

OLD = ["circle", "square", "triangle", "ellipse"]
NEW = ["triangle", "hexagon", "circle"]  # two shared classes, reordered, and a new one
RECIPES = [
    "shapes_faster_rcnn.yaml", "shapes_mask_rcnn.yaml", "shapes_ssd.yaml", "shapes_yolo_grid.yaml",
    "shapes_yolo_v1.yaml", "shapes_sliding_window.yaml", "shapes_rcnn.yaml",
]


def _model(recipe: str, classes: list[str], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = load_config(CONFIG_DIR / recipe, ["model.backbone.width=8"])
    return build_detector(config, load_plugins().registry, num_classes=len(classes))


def _randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter and buffer random, so equal rows cannot be equal by chance (zeros, ones)."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=g))
    return model


def test_class_rows_by_hand():
    layout = ClassRows(groups=2, lead=5, per_class=1)  # YOLO-like: 2 anchors x (5 + K)
    assert layout.size(3) == 16 and layout.rows(3, 1) == [6, 14]
    assert layout.rows(3, None) == [0, 1, 2, 3, 4, 8, 9, 10, 11, 12]
    boxes = ClassRows(per_class=4, background=True)  # Fast R-CNN deltas: 4 (K + 1)
    assert boxes.size(2) == 12 and boxes.rows(2, 0) == [4, 5, 6, 7] and boxes.rows(2, None) == [0, 1, 2, 3]


@pytest.mark.parametrize("recipe", RECIPES)
def test_declared_class_rows_match_the_tensors(recipe):
    model = _model(recipe, OLD, seed=0)
    layouts = class_rows_of(model)
    assert layouts, f"{recipe}: no class-dependent tensor declared"
    state = model.state_dict()
    for name, layout in layouts.items():
        assert name in state, name
        assert state[name].shape[0] == layout.size(len(OLD)), name


@pytest.mark.parametrize("recipe", RECIPES)
def test_shared_classes_keep_their_rows_new_ones_start_fresh(recipe, tmp_path):
    old = _randomized(_model(recipe, OLD, seed=0))
    path = save_checkpoint(tmp_path / "old.pt", model=old, config={"model": {}}, class_names=OLD)
    new = _model(recipe, NEW, seed=1)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    report = init_weights(new, str(path), class_names=NEW)
    old_state, new_state, layouts = old.state_dict(), new.state_dict(), class_rows_of(new)
    assert set(report.remapped) == set(layouts) and not report.skipped and not report.missing
    assert all(classes == ["triangle", "circle"] for classes in report.remapped.values())
    for name, value in new_state.items():
        if name not in layouts:
            assert torch.equal(value, old_state[name]), name  # every other tensor is the file's
            continue
        rows = layouts[name]
        for new_label, old_label in ((0, 2), (2, 0), (None, None)):  # triangle, circle, background/lead rows
            assert torch.equal(value[rows.rows(3, new_label)], old_state[name][rows.rows(4, old_label)]), name
        assert torch.equal(value[rows.rows(3, 1)], fresh[name][rows.rows(3, 1)]), name  # hexagon: as built
    summary = report.summary()
    assert "tensors kept" in summary and "rows of 2 classes kept by name (circle, triangle)" in summary
    assert "1 new class started fresh (hexagon)" in summary and "re-initialized" not in summary


def test_kept_rows_give_the_same_scores_for_the_shared_classes(tmp_path):
    """The oracle for the layouts: the new SSD scores triangle and circle exactly as the old one did."""
    old = _randomized(_model("shapes_ssd.yaml", OLD, seed=0)).eval()
    path = save_checkpoint(tmp_path / "old.pt", model=old, config={"model": {}}, class_names=OLD)
    new = _model("shapes_ssd.yaml", NEW, seed=1).eval()
    init_weights(new, str(path), class_names=NEW)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        maps_old, maps_new = old.extract_features(x), new.extract_features(x)
        logits_old = old.dense_head._flatten(old.dense_head.cls_logits, list(maps_old.maps.values()), 5)
        logits_new = new.dense_head._flatten(new.dense_head.cls_logits, list(maps_new.maps.values()), 4)
    # columns: background, then the classes in label order
    torch.testing.assert_close(logits_new[..., [0, 1, 3]], logits_old[..., [0, 3, 1]])


def test_a_tensor_that_is_not_class_dependent_must_fit(tmp_path):
    old = _model("shapes_faster_rcnn.yaml", OLD, seed=0)
    path = save_checkpoint(tmp_path / "old.pt", model=old, config={"model": {}}, class_names=OLD)
    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / "shapes_faster_rcnn.yaml", ["model.backbone.width=16"])
    wider = build_detector(config, load_plugins().registry, num_classes=4)
    with pytest.raises(CheckpointError, match=r"does not fit: backbone\..*not a class-dependent layer.*"
                                              r"train.init_weights_strict=false"):
        init_weights(wider, str(path), class_names=OLD)
    report = init_weights(wider, str(path), class_names=OLD, strict=False)
    assert report.skipped and "skipped as they do not fit" in report.summary()


def test_a_torchvision_classifier_file_fills_the_backbone(tmp_path):
    torch.manual_seed(0)
    classifier = torchvision.models.resnet18(weights=None)
    torch.save(classifier.state_dict(), tmp_path / "resnet18.pth")
    torch.manual_seed(1)
    config = load_config(CONFIG_DIR / "shapes_faster_rcnn.yaml", ["model.backbone.width=64"])  # resnet18 as published
    model = build_detector(config, load_plugins().registry, num_classes=2)
    report = init_weights(model, str(tmp_path / "resnet18.pth"), class_names=["a", "b"])
    assert report.description == "classifier state dict, as backbone"
    assert torch.equal(model.backbone.conv1.weight, classifier.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, classifier.layer4[1].conv2.weight)
    assert "fc.weight" not in model.state_dict() and report.unused == ["backbone.fc.weight", "backbone.fc.bias"]


@pytest.fixture(scope="module")
def torchvision_mask_rcnn(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A seeded random torchvision Mask R-CNN state dict: the stand-in for the COCO file."""
    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    with torch.no_grad():  # non-trivial box and mask predictors (torchvision inits their biases at 0)
        for param in [*tv.roi_heads.box_predictor.parameters(), *tv.roi_heads.mask_predictor.parameters()]:
            param.normal_()
    state = tv.state_dict()
    path = tmp_path_factory.mktemp("tv") / "maskrcnn_coco.pth"
    torch.save(state, path)
    return path, state


def test_a_torchvision_mask_rcnn_onto_two_classes_keeps_person(torchvision_mask_rcnn):
    path, tv = torchvision_mask_rcnn
    torch.manual_seed(3)
    config = load_config(CONFIG_DIR / "mask_rcnn_r50_fpn.yaml")
    model = build_detector(config, load_plugins().registry, num_classes=2)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_weights(model, str(path), class_names=["person", "balloon"], registry=load_plugins().registry)
    assert report.description == "torchvision state dict, as maskrcnn_resnet50_fpn"
    assert not report.missing and not report.skipped
    state = model.state_dict()
    assert torch.equal(state["backbone.conv1.weight"], tv["backbone.body.conv1.weight"])  # kept tensors: the file's
    assert torch.equal(state["neck.lateral_convs.0.weight"], tv["backbone.fpn.inner_blocks.0.0.weight"])
    # box classifier: background and person (COCO label 1) kept, balloon as a fresh model has it
    cls = tv["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(state["roi_head.predictor.cls_score.weight"][:2], cls[:2])
    assert torch.equal(state["roi_head.predictor.cls_score.weight"][2], fresh["roi_head.predictor.cls_score.weight"][2])
    deltas = tv["roi_heads.box_predictor.bbox_pred.weight"]
    assert torch.equal(state["roi_head.predictor.bbox_pred.weight"][:8], deltas[:8])
    # mask predictor: torchvision's channel 1 (person; channel 0 is its background) is detkit's channel 0
    masks = tv["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert torch.equal(state["roi_head.mask_head.predictor.weight"][0], masks[1])
    assert sorted(report.remapped) == [
        "roi_head.mask_head.predictor.bias", "roi_head.mask_head.predictor.weight",
        "roi_head.predictor.bbox_pred.bias", "roi_head.predictor.bbox_pred.weight",
        "roi_head.predictor.cls_score.bias", "roi_head.predictor.cls_score.weight",
    ]
    assert "rows of 1 class kept by name (person), 1 new class started fresh (balloon)" in report.summary()


def test_the_fine_tuning_command_runs_from_the_cli(torchvision_mask_rcnn, tmp_path, capsys):
    from detkit.cli import main

    path, _ = torchvision_mask_rcnn
    assert main(["-q", "import-torchvision", "maskrcnn_resnet50_fpn", str(path), str(tmp_path / "coco_mask.pt")]) == 0
    data = tmp_path / "data"
    shapes = f"name: shapes, root: {data}, num_train: 2, num_val: 2, image_size: 64, masks: true"
    args = [
        "-q", "train", str(CONFIG_DIR / "finetune_mask_rcnn.yaml"),
        f"data.train={{{shapes}, split: train}}", f"data.val={{{shapes}, split: val}}",
        f"train.init_weights={tmp_path / 'coco_mask.pt'}",
        "model.preprocess.min_size=64", "model.preprocess.max_size=64",
        "train.max_iters=1", "train.batch_size=1", "train.max_minutes=null", "train.device=cpu",
        f"output.dir={tmp_path / 'run'}",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("init_weights"))
    assert "(detkit checkpoint)" in line and "re-initialized for the new classes (roi_head.mask_head.predictor" in line
    assert "no class in common" in line and "4 new classes started fresh" in line  # no shape is a COCO class
    assert (tmp_path / "run" / "best.pt").is_file()
