"""SSDlite320 on MobileNetV3-Large (plugin detkit_single_shot): torchvision parity of the imported
ssdlite320_mobilenet_v3_large (detections and training losses), the trunk against torchvision's
MobileNetV3-Large, learning on shapes images, and images without objects."""

import copy

import numpy as np
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
from detkit_single_shot import SSDLiteHead, SSDLiteMobileNetV3
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

from detkit import CheckpointError
from detkit.config import load_config
from detkit.data.images import image_to_tensor, read_image
from detkit.data.shapes import render_shapes_image
from detkit.detectors import build_detector
from detkit.importers import CONFIG_DIR
from detkit.plugins import load_plugins
from detkit.structures import Detections, Targets


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convolutions: a second thread only waits for the first on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _lively(model: torch.nn.Module, seed: int) -> None:
    """Redraw every weight and batch-norm statistic from a seeded generator, in place.

    torchvision's own initialization (N(0, 0.03) convolutions, running statistics 0 and 1)
    shrinks the activations through the trunk to ~1e-16 in eval mode, so every score is
    exactly 1/91 and any order of detections would match; He-scaled weights and spread
    statistics give distinct scores and boxes.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


# ---------------------------------------------------------------- torchvision parity


@pytest.fixture(scope="module")
def torchvision_ssdlite(tmp_path_factory):
    """torchvision's ssdlite320_mobilenet_v3_large with seeded random weights, and its state-dict file."""
    torch.manual_seed(0)
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, score_thresh=0.0
    ).eval()
    _lively(model, seed=0)
    with torch.no_grad():
        for predictor in model.head.classification_head.module_list:
            predictor[1].weight.mul_(0.3)  # softer logits: saturated scores (0.99997...) tie in float32
    path = tmp_path_factory.mktemp("tv") / "ssdlite.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def imported_checkpoint(torchvision_ssdlite, tmp_path_factory):
    """The torchvision file converted by `detkit import-torchvision`."""
    return import_torchvision(
        "ssdlite320_mobilenet_v3_large", torchvision_ssdlite[1], tmp_path_factory.mktemp("dk") / "ssdlite.pt"
    )


@pytest.fixture(scope="module")
def imported_ssdlite(imported_checkpoint):
    from detkit.engine.build import load_model

    return load_model(imported_checkpoint, overrides=["model.postprocess.score_thresh=0.0"])[0].model


def test_imported_ssdlite_matches_torchvision_exactly_in_python(torchvision_ssdlite, imported_ssdlite):
    """No rounding, a non-square image, every detection (score_thresh 0, 300 kept)."""
    tv_model, _ = torchvision_ssdlite
    imported_ssdlite.eval()
    image = blurred_image(240, 351, seed=1)
    with torch.no_grad():
        ours = imported_ssdlite([image])[0][0]
        theirs = tv_model([image])[0]
    assert len(ours) == len(theirs["boxes"]) == 300
    assert len(theirs["labels"].unique()) > 5 and theirs["scores"].unique().numel() > 250  # not a tie-breaking test
    assert torch.allclose(ours.boxes, theirs["boxes"], atol=1e-3)
    assert torch.allclose(ours.scores, theirs["scores"], atol=1e-5)
    assert torch.equal(ours.labels + 1, theirs["labels"])


def test_import_and_detect_match_torchvision_ssdlite(torchvision_ssdlite, imported_checkpoint, shared_data, tmp_path):
    photo = real_photo(shared_data, tmp_path)
    tv_model, _ = torchvision_ssdlite
    thresh, theirs = cutting_threshold(tv_model, image_to_tensor(read_image(photo)))
    ours = detect_photo(imported_checkpoint, photo, tmp_path / "out", score_thresh=thresh)
    assert_json_detections_equal(ours, theirs, imported_checkpoint)


def test_imported_ssdlite_training_losses_match_torchvision(torchvision_ssdlite, imported_ssdlite):
    """Matching, hard negative mining and both losses against torchvision's, batch-norm in training mode."""
    # training updates the running statistics: copies keep the module's models as they are
    tv_model, ours_model = copy.deepcopy(torchvision_ssdlite[0]), copy.deepcopy(imported_ssdlite)
    boxes = [
        torch.tensor([[10.0, 20.0, 200.0, 180.0], [150.0, 5.0, 340.0, 90.0]]),
        torch.tensor([[30.0, 40.0, 90.0, 250.0]]),
    ]
    labels = [torch.tensor([0, 16]), torch.tensor([61])]  # detkit labels; torchvision's are + 1
    theirs, ours = training_losses(tv_model, ours_model, boxes, labels)
    assert set(ours) == {"loss_ssdlite_cls", "loss_ssdlite_box"}
    assert torch.allclose(ours["loss_ssdlite_cls"], theirs["classification"], rtol=1e-5)
    assert torch.allclose(ours["loss_ssdlite_box"], theirs["bbox_regression"], rtol=1e-5)
    assert ours["loss_ssdlite_box"] > 0 and ours["loss_ssdlite_cls"] > 0


def test_default_boxes_are_torchvision_ssdlite320s():
    head = SSDLiteHead(in_channels=[8] * 6, num_classes=2)
    grid_sizes, image_size = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)], (320, 320)
    ours = head.default_boxes(grid_sizes, image_size)
    tv = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    features = [torch.zeros(1, 1, h, w) for h, w in grid_sizes]
    theirs = tv(ImageList(torch.zeros(1, 3, *image_size), [image_size]), features)[0]
    assert ours.shape == (3234, 4) and torch.equal(ours, theirs)


@pytest.mark.parametrize(("width_mult", "reduced_tail"), [(1.0, False), (0.75, True)])
def test_trunk_from_torchvision_mobilenet_v3_large_weights(width_mult, reduced_tail, tmp_path):
    """The two trunk maps from a torchvision classifier's weights: c4 is the C4 block's expansion."""
    torch.manual_seed(0)
    classifier = torchvision.models.mobilenet_v3_large(width_mult=width_mult, reduced_tail=reduced_tail)
    _lively(classifier, seed=1)
    classifier.eval()
    path = tmp_path / "mobilenet.pth"
    torch.save(classifier.state_dict(), path)
    backbone = SSDLiteMobileNetV3(width_mult=width_mult, reduced_tail=reduced_tail, weights=str(path)).eval()
    x = blurred_image(160, 224, seed=4)[None]
    with torch.no_grad():
        features = backbone(x)
        trunk = classifier.features
        c4 = trunk[13].block[0](trunk[:13](x))
        c5 = trunk(x)
    assert torch.allclose(features["c4"], c4, atol=1e-5) and torch.allclose(features["c5"], c5, atol=1e-5)
    assert features.names() == ["c4", "c5", "extra0", "extra1", "extra2", "extra3"]
    assert [features[n].shape[-1] for n in features.names()] == [14, 7, 4, 2, 1, 1]
    assert backbone.out_channels["c4"] == c4.shape[1] and backbone.out_channels["c5"] == c5.shape[1]
    if reduced_tail:
        with pytest.raises(CheckpointError, match="not MobileNetV3-Large weights for this trunk"):
            SSDLiteMobileNetV3(weights=str(path))


# ---------------------------------------------------------------- learning, empty images


def _small_ssdlite(num_classes: int = 4):
    """The SSDlite320 recipe at half width on 128 px inputs (maps of 8, 4, 2, 1, 1 and 1 cells)."""
    config = load_config(CONFIG_DIR / "ssdlite320_mobilenet_v3_large.yaml", [
        "model.preprocess.min_size=128", "model.preprocess.max_size=128", "model.backbone.width_mult=0.5",
    ])
    torch.manual_seed(0)
    return build_detector(config, load_plugins().registry, num_classes=num_classes)


def _shapes_batch(count: int, size: int, seed: int) -> tuple[list[torch.Tensor], list[Targets]]:
    """Generated shapes images with the boxes of their visible parts."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(count):
        image, objects = render_shapes_image(rng, size)
        boxes, labels = [], []
        for obj in objects:
            ys, xs = np.nonzero(obj.visible)
            if len(xs):
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                labels.append(obj.label)
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        targets.append(Targets(boxes=torch.tensor(boxes, dtype=torch.float32), labels=torch.tensor(labels)))
    return images, targets


@pytest.mark.slow
def test_ssdlite_overfits_a_few_shapes_images():
    model = _small_ssdlite().train()
    images, targets = _shapes_batch(4, 128, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(20):
        _, losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    assert all(np.isfinite(history))
    assert history[-1] < 0.2 * history[0], history  # about 14 -> 1 on this seed


def test_image_without_objects_trains_and_detects():
    model = _small_ssdlite(num_classes=3).train()
    images = [torch.rand(3, 100, 140), torch.rand(3, 128, 128)]
    _, losses = model(images, [Targets(), Targets()])
    assert set(losses) == {"loss_ssdlite_cls", "loss_ssdlite_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_ssdlite_box"] == 0  # no positive, hence no mined negative either
    sum(losses.values()).backward()
    # one image with an object, one without: the empty one adds only its (zero) negatives
    target = Targets(boxes=torch.tensor([[10.0, 20.0, 60.0, 80.0]]), labels=torch.tensor([2]))
    _, losses = model(images, [target, Targets()])
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_ssdlite_box"] > 0

    model.eval()
    with torch.no_grad():
        dets, losses = model([torch.rand(3, 90, 200)])
        assert losses == {} and len(dets) == 1 and isinstance(dets[0], Detections)
        assert (dets[0].boxes[:, 2] <= 200).all() and (dets[0].boxes[:, 3] <= 90).all()
        model.postprocess.score_thresh = 1.0  # nothing can pass
        empty, _ = model([torch.rand(3, 64, 64), torch.rand(3, 128, 96)])
    assert [len(d) for d in empty] == [0, 0]
    assert empty[0].boxes.shape == (0, 4) and empty[0].labels.dtype == torch.int64


def test_plugin_registers_ssdlite():
    registry = load_plugins().registry
    for kind, name in [("dense_head", "ssdlite"), ("backbone", "ssdlite_mobilenet_v3_large"),
                       ("importer", "ssdlite320_mobilenet_v3_large")]:
        assert registry.get(kind, name).plugin == "detkit_single_shot"
    head = _small_ssdlite(num_classes=3).dense_head
    rows = head.class_rows()  # the class-dependent tensors are the last 1x1 of each predictor
    assert set(rows) == {f"cls_logits.{k}.1.{p}" for k in range(6) for p in ("weight", "bias")}
    assert rows["cls_logits.0.1.weight"].size(3) == head.cls_logits[0][1].out_channels == 6 * 4
