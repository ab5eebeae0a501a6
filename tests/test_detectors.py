"""The detector contract, the same for every family: inputs checked at the boundary, one
Detections per image in training and at inference, in the input images' pixels."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from detkit.config import load_config
from detkit.detectors import DenseDetector, Detector, TwoStageDetector, build_detector, check_feature_maps
from detkit.errors import ConfigError, DataError
from detkit.importers import CONFIG_DIR
from detkit.plugins import load_plugins
from detkit.structures import Targets

#: every shipped shapes recipe, one per detector family (and the Fast R-CNN variant)
RECIPES = {
    "shapes_faster_rcnn.yaml": TwoStageDetector,
    "shapes_mask_rcnn.yaml": TwoStageDetector,
    "shapes_fast_rcnn.yaml": TwoStageDetector,
    "shapes_rcnn.yaml": TwoStageDetector,
    "shapes_ssd.yaml": DenseDetector,
    "shapes_yolo_v1.yaml": DenseDetector,
    "shapes_yolo_grid.yaml": DenseDetector,
    "shapes_sliding_window.yaml": DenseDetector,
}


def _build(recipe: str) -> Detector:
    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / recipe)
    config["model"]["num_classes"] = 4
    return build_detector(config, load_plugins().registry, num_classes=4)


def _targets() -> list[Targets]:
    masks = torch.zeros(1, 96, 128, dtype=torch.uint8)
    masks[0, 20:60, 10:50] = 1
    return [
        Targets(boxes=torch.tensor([[10.0, 20.0, 50.0, 60.0]]), labels=torch.tensor([1]), masks=masks),
        Targets(masks=torch.zeros(0, 128, 112, dtype=torch.uint8)),
    ]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_family_keeps_the_contract(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("DETKIT_CACHE", str(tmp_path))  # selective search's proposal cache
    model = _build(recipe)
    assert isinstance(model, RECIPES[recipe])
    images = [torch.rand(3, 96, 128), torch.rand(3, 128, 112)]
    model.train()
    detections, losses = model(images, _targets())
    assert [len(d) for d in detections] == [0, 0]  # one empty Detections per image in training
    assert losses and all(k.startswith("loss_") and torch.isfinite(v) for k, v in losses.items())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        detections, losses = model(images)
    assert losses == {} and len(detections) == 2
    for dets, image in zip(detections, images):
        height, width = image.shape[-2:]
        assert dets.boxes.shape[1] == 4 and len(dets.scores) == len(dets.labels) == len(dets)
        assert (dets.boxes[:, 2] <= width + 1e-3).all() and (dets.boxes[:, 3] <= height + 1e-3).all()
        assert dets.labels.dtype == torch.int64 and ((dets.labels >= 0) & (dets.labels < 4)).all()


def test_training_needs_targets_one_per_image():
    model = _build("shapes_faster_rcnn.yaml").train()
    with pytest.raises(ValueError, match="needs targets"):
        model([torch.rand(3, 64, 64)])
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        model([torch.rand(3, 64, 64)] * 2, _targets()[:1])


DEGENERATE = torch.tensor([[10.0, 10.0, 40.0, 40.0], [30.0, 20.0, 30.0, 50.0]])  # box 1 has no width


@pytest.mark.parametrize("recipe", ["shapes_faster_rcnn.yaml", "shapes_ssd.yaml"])
def test_degenerate_target_boxes_are_refused_like_torchvision(recipe):
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    good = Targets(boxes=torch.tensor([[1.0, 1.0, 9.0, 9.0]]), labels=torch.tensor([0]))
    bad = Targets(boxes=DEGENERATE, labels=torch.tensor([0, 1]))
    # the oracle: torchvision's detectors refuse the same targets before computing a loss
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64
    ).train()
    tv_targets = [{"boxes": t.boxes, "labels": t.labels + 1} for t in (good, bad)]
    with pytest.raises((ValueError, AssertionError), match=r"positive height and width.*\[30.0, 20.0, 30.0, 50.0\]"):
        reference(images, tv_targets)
    model = _build(recipe).train()
    with pytest.raises(DataError, match=r"targets of image 1: box 1 \[30.0, 20.0, 30.0, 50.0\] is degenerate"):
        model(images, [good, bad])
    _, losses = model(images, [good, good])  # the same call with valid boxes trains
    assert all(torch.isfinite(v) for v in losses.values())


# ----------------------------------------------------------------------------- wiring checked when built


def _shapes(*overrides: str) -> dict:
    return load_config(CONFIG_DIR / "shapes_faster_rcnn.yaml", list(overrides))


def test_in_features_the_neck_does_not_give_are_refused_when_built():
    # c3..c5 through the FPN give p3..p6: the RoI pooler's default p2 does not exist
    config = _shapes("model.backbone.out_features=[c3,c4,c5]", "model.proposer.anchor_sizes=[[16],[32],[64],[128]]")
    with pytest.raises(ConfigError, match=r"model.region_extractor.in_features names p2, which the backbone/neck "
                                          r"does not give; it gives p3, p4, p5, p6"):
        build_detector(config, load_plugins().registry, num_classes=4)
    config = _shapes(
        "model.backbone.out_features=[c3,c4,c5]", "model.proposer.anchor_sizes=[[16],[32],[64],[128]]",
        "model.region_extractor.in_features=[p3,p4,p5]", "model.mask_head={name: mask_rcnn}",
    )
    with pytest.raises(ConfigError, match=r"model.mask_head.in_features names p2"):
        build_detector(config, load_plugins().registry, num_classes=4)
    config["model"]["mask_head"]["in_features"] = ["p3", "p4", "p5"]
    assert isinstance(build_detector(config, load_plugins().registry, num_classes=4), TwoStageDetector)


class _Maps:
    def __init__(self, channels: dict, strides: dict) -> None:
        self.out_channels, self.out_strides = channels, strides


@pytest.mark.parametrize(
    ("channels", "strides", "message"),
    [
        ({}, {}, "gives no feature map"),
        ({"a": 8, "b": 8}, {"b": 16, "a": 8}, "must name the same maps in the same order"),
        ({"a": 8, "b": 8}, {"a": 8, "b": 12}, r"powers of two .* got b=12"),
        ({"a": 8, "b": 8}, {"a": 16, "b": 8}, r"finest first .* a \(stride 16\), b \(stride 8\)"),
    ],
)
def test_feature_maps_must_be_named_alike_powers_of_two_and_finest_first(channels, strides, message):
    with pytest.raises(ConfigError, match=message):
        check_feature_maps(_Maps(channels, strides), "model.backbone")
    check_feature_maps(_Maps({"c3": 8, "c4": 8}, {"c3": 8, "c4": 16}), "model.backbone")  # a good one passes


def test_post_processing_is_a_component_a_config_selects():
    from detkit.stages import DetectionPostProcess

    class BestOnly(DetectionPostProcess):
        """The NMS post-processing, keeping each image's best detection only."""

        def __init__(self, *, score_thresh: float = 0.0) -> None:
            super().__init__(score_thresh=score_thresh, detections_per_img=1)

    registry = load_plugins().registry
    registry.register("postprocess", "best_only", BestOnly, plugin="tests")
    config = _shapes("model.postprocess={name: best_only}", "model.postprocess.score_thresh=0.0")
    assert config["model"]["postprocess"] == {"name": "best_only", "score_thresh": 0.0}  # the nms keys are gone
    model = build_detector(config, registry, num_classes=4).eval()
    assert isinstance(model.postprocess, BestOnly)
    with torch.no_grad():
        detections, _ = model([torch.rand(3, 96, 128), torch.rand(3, 64, 64)])
    assert [len(d) for d in detections] == [1, 1]
    default = build_detector(_shapes(), registry, num_classes=4)
    assert type(default.postprocess) is DetectionPostProcess  # model.postprocess.name defaults to nms


def test_winograd_detector_gives_the_same_losses_gradients_and_features(monkeypatch):
    """Oracle: the same detector with direct convolutions (the FPN and RPN 3x3 convs change path)."""
    from detkit.ops.winograd import WinogradConv2d

    monkeypatch.setattr(WinogradConv2d, "min_tiles", 1)  # the test images are small
    monkeypatch.setattr(WinogradConv2d, "min_training_tiles", 1)
    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / "shapes_faster_rcnn.yaml", ["model.neck.out_channels=128"])
    model = build_detector(config, load_plugins().registry, num_classes=4)
    images = [torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    targets = [Targets(boxes=torch.tensor([[10.0, 20.0, 50.0, 60.0]]), labels=torch.tensor([1]))] * 2
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def run() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        model.load_state_dict(start)  # the training pass moves batch-norm statistics
        torch.manual_seed(1)  # the RPN and RoI samplers draw the same regions
        model.train().zero_grad()
        losses = model(images, targets)[1]
        sum(losses.values()).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        with torch.no_grad():  # inference: the kept transformed filters
            batch = model.eval().preprocess(images, None)[0].tensor
            return losses, grads, dict(model.extract_features(batch).maps)

    direct = run()
    model.use_winograd()
    # the 4 FPN outputs, the RPN conv and the three stride-1 convs of layer4 (128 channels at width 16)
    assert sum(isinstance(m, WinogradConv2d) for m in model.modules()) == 8
    assert list(model.state_dict()) == list(start)
    winograd = run()
    for name, loss in direct[0].items():
        torch.testing.assert_close(winograd[0][name], loss, rtol=1e-4, atol=1e-6)
    for name, grad in direct[1].items():
        torch.testing.assert_close(winograd[1][name], grad, rtol=1e-3, atol=1e-4 * float(grad.abs().max()))
    for name, value in direct[2].items():
        torch.testing.assert_close(winograd[2][name], value, rtol=1e-4, atol=1e-5 * float(value.abs().max()))


def test_model_winograd_and_channels_last_in_a_config_build_them():
    """``detkit train`` and ``load_model`` build through ``build_detector``: the config keys reach both."""
    from detkit.ops.winograd import WinogradConv2d

    overrides = ["model.neck.out_channels=128", "model.winograd=true", "model.channels_last=true"]
    model = build_detector(load_config(CONFIG_DIR / "shapes_faster_rcnn.yaml", overrides), load_plugins().registry,
                           num_classes=4)
    assert sum(isinstance(m, WinogradConv2d) for m in model.modules()) == 8
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert model.channels_last and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    plain = build_detector(load_config(CONFIG_DIR / "shapes_faster_rcnn.yaml", overrides[:1]), load_plugins().registry,
                           num_classes=4)
    assert list(plain.state_dict()) == list(model.state_dict())
    assert not any(isinstance(m, WinogradConv2d) for m in plain.modules()) and not plain.channels_last


@pytest.mark.parametrize("recipe", ["shapes_faster_rcnn.yaml", "shapes_mask_rcnn.yaml", "shapes_ssd.yaml"])
def test_channels_last_computes_the_same_features_and_detections(recipe):
    """Oracle: the same detector on NCHW tensors; NHWC only reorders the float rounding."""
    model = _build(recipe).eval()
    images = [torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        batch = model.preprocess(images, None)[0].tensor
        nchw = model.extract_features(batch)
        dets_nchw = model(images)[0]
        model.use_channels_last()
        nhwc = model.extract_features(batch)
        dets_nhwc = model(images)[0]
    for name, value in nchw.maps.items():
        assert nhwc.maps[name].is_contiguous(memory_format=torch.channels_last), name
        torch.testing.assert_close(nhwc.maps[name], value, rtol=1e-4, atol=1e-4 * float(value.abs().max()))
    for a, b in zip(dets_nchw, dets_nhwc, strict=True):
        assert len(a) == len(b)
        torch.testing.assert_close(b.boxes, a.boxes, rtol=0, atol=0.05)
