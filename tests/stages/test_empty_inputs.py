"""Every stage on empty input: no targets, no proposals, no detections, tiny images.

Each stage must return well-formed (empty) outputs and finite losses, and the
whole detector must train (backward) on an image without objects.
"""

import pytest
import torch

from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.importers import CONFIG_DIR
from detkit.plugins import load_plugins
from detkit.stages.postprocess import DetectionPostProcess
from detkit.stages.preprocess import ResizeNormalize
from detkit.structures import Detections, ImageBatch, Proposals, Targets


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / "shapes_faster_rcnn.yaml")
    return build_detector(config, load_plugins().registry, num_classes=4)


def empty_targets(n: int = 1) -> list[Targets]:
    return [Targets() for _ in range(n)]


def features_and_batch(model, images):
    batch, _ = model.preprocess(images)
    return batch, model.extract_features(batch.tensor)


def test_preprocess_keeps_empty_targets_and_masks():
    pre = ResizeNormalize(min_size=64, max_size=100)
    targets = [Targets(masks=torch.zeros((0, 30, 40), dtype=torch.uint8))]
    batch, out = pre([torch.rand(3, 30, 40)], targets)
    assert batch.image_sizes == [(64, 85)] and batch.tensor.shape[-2:] == (64, 96)
    assert len(out[0]) == 0 and out[0].masks.shape == (0, 64, 85)


def test_rpn_trains_on_image_without_objects(model):
    model.train()
    images = [torch.rand(3, 128, 128)]
    batch, features = features_and_batch(model, images)
    proposals, losses = model.proposer(batch, features, empty_targets())
    assert set(losses) == {"loss_rpn_objectness", "loss_rpn_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_rpn_box"].item() == 0.0  # nothing to regress
    assert proposals[0].boxes.shape[1] == 4


def test_rpn_inference_on_blank_image_gives_valid_proposals(model):
    model.eval()
    batch, features = features_and_batch(model, [torch.zeros(3, 128, 128)])
    with torch.no_grad():
        proposals, losses = model.proposer(batch, features)
    assert losses == {}
    boxes = proposals[0].boxes
    assert bool((boxes[:, 2] >= boxes[:, 0]).all()) and bool((boxes[:, 3] <= 128).all())
    assert bool((proposals[0].objectness[:-1] >= proposals[0].objectness[1:]).all())


def test_roi_head_with_zero_proposals(model):
    batch, features = features_and_batch(model, [torch.rand(3, 128, 128), torch.rand(3, 128, 128)])
    zero = [Proposals(), Proposals()]
    model.eval()
    with torch.no_grad():
        raw, losses = model.roi_head(batch, features, zero)
    assert losses == {} and [len(d) for d in raw] == [0, 0]
    model.train()
    targets = [Targets(boxes=torch.tensor([[10.0, 10, 50, 50]]), labels=torch.tensor([2])), Targets()]
    _, losses = model.roi_head(batch, features, zero, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_roi_head_ignores_crowd_only_targets(model):
    model.train()
    batch, features = features_and_batch(model, [torch.rand(3, 128, 128)])
    crowd = Targets(boxes=torch.tensor([[0.0, 0, 100, 100]]), labels=torch.tensor([1]), iscrowd=torch.tensor([True]))
    proposals = [Proposals(boxes=torch.tensor([[5.0, 5, 90, 90]]), objectness=torch.tensor([0.9]))]
    _, losses = model.roi_head(batch, features, proposals, [crowd])
    assert losses["loss_roi_box"].item() == 0.0  # the crowd box is no positive


def test_postprocess_with_zero_detections():
    post = DetectionPostProcess()
    batch = ImageBatch(torch.zeros(1, 3, 32, 32), [(20, 30)], [(40, 60)])
    (out,) = post([Detections()], batch)
    assert len(out) == 0 and out.boxes.shape == (0, 4)


def test_detector_trains_and_infers_on_empty_and_tiny_images(model):
    model.train()
    images = [torch.rand(3, 128, 128), torch.rand(3, 1, 1)]
    _, losses = model(images, empty_targets(2))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        detections, losses = model([torch.rand(3, 1, 1), torch.zeros(3, 5, 300)])
    assert losses == {}
    for dets, (h, w) in zip(detections, [(1, 1), (5, 300)]):
        assert bool((dets.boxes[:, 2] <= w).all()) and bool((dets.boxes[:, 3] <= h).all())
