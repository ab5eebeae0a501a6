"""R-CNN and Fast R-CNN parts: warped crops, RoI max pooling, the SVMs and box regressors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from detkit.backbones import build_backbone
from detkit.data.loader import Batch
from detkit.detectors import build_rcnn
from detkit.errors import ConfigError
from detkit.plugins import load_plugins
from detkit.stages.base import Proposer
from detkit.stages.rcnn_head import BankedObjects, BankedProposals, RCNNHead, RegionBank
from detkit.stages.region_features import MultiScaleRoIPool, WarpedCrops, context_boxes
from detkit.structures import FeatureMaps, ImageBatch, Proposals, Targets


def test_context_boxes_leave_padding_pixels_of_context():
    boxes = torch.tensor([[8.0, 8.0, 56.0, 56.0], [10.0, 20.0, 30.0, 100.0]])
    grown = context_boxes(boxes, crop_size=64, context_padding=8)
    # the box must cover 64 - 2 * 8 = 48 of the 64 crop pixels on each axis
    inner = (boxes[:, 2:] - boxes[:, :2]) / (grown[:, 2:] - grown[:, :2])
    torch.testing.assert_close(inner, torch.full_like(inner, 48 / 64))
    torch.testing.assert_close(grown[0], torch.tensor([0.0, 0.0, 64.0, 64.0]))
    with pytest.raises(ValueError, match="context_padding"):
        context_boxes(boxes, crop_size=16, context_padding=8)


def test_warped_crop_of_an_exact_window_is_the_pixels():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 80, 96)
    batch = ImageBatch(image, [(80, 96)], [(80, 96)])
    extractor = WarpedCrops(crop_size=32, context_padding=4)
    # dilated by 4 / 24 of 24 px = 4 px each side: reads exactly x 10..42, y 20..52
    crops = extractor(batch, None, [torch.tensor([[14.0, 24.0, 38.0, 48.0]])]).features
    torch.testing.assert_close(crops[0], image[0, :, 20:52, 10:42])


def test_warped_crop_outside_the_image_reads_the_padding():
    image = torch.ones(1, 3, 16, 16)
    crops = WarpedCrops(crop_size=8, context_padding=0)(
        ImageBatch(image, [(16, 16)], [(16, 16)]), None, [torch.tensor([[-20.0, 0.0, -4.0, 16.0]])]
    ).features
    assert crops.abs().max() == 0  # left of the image: zeros, the mean colour once normalized


def test_roi_max_pool_matches_torchvision_on_one_level():
    torch.manual_seed(0)
    fmap = torch.randn(2, 5, 20, 24)
    boxes = [torch.tensor([[0.0, 0.0, 40.0, 40.0], [8.0, 4.0, 90.0, 70.0]]), torch.tensor([[16.0, 16.0, 60.0, 30.0]])]
    pooled = MultiScaleRoIPool(in_features=["c2"], output_size=3)(
        ImageBatch(torch.zeros(2, 3, 80, 96), [(80, 96)] * 2, [(80, 96)] * 2),
        FeatureMaps({"c2": fmap}, {"c2": 4}), boxes,
    )
    expected = torchvision.ops.roi_pool(fmap, boxes, (3, 3), spatial_scale=0.25)
    torch.testing.assert_close(pooled.features, expected)
    assert pooled.num_per_image == [2, 1]


def _head(num_classes: int = 2, **kwargs) -> RCNNHead:
    network = build_backbone("resnet18", width=8, out_features=["c5"])
    return RCNNHead(
        region_extractor=WarpedCrops(crop_size=32, context_padding=4), network=network, num_classes=num_classes,
        representation_size=16, **kwargs,
    )


def _svm_bank(rng: np.random.Generator, d: int = 16) -> tuple[BankedProposals, BankedObjects]:
    """Two classes along two directions; negatives around zero, a few of them near class 0."""
    gt = np.zeros((40, d), np.float32)
    gt[:20, 0] = 3.0
    gt[20:, 1] = 3.0
    feats = rng.normal(0, 0.3, (400, d)).astype(np.float32)
    feats[:10, 0] += 2.0  # hard negatives for class 0
    proposals = BankedProposals(
        proposal_boxes=torch.zeros(400, 4), features=torch.from_numpy(feats), class_iou=torch.zeros(400, 2),
        gt_labels=torch.zeros(400, dtype=torch.int64), gt_boxes=torch.zeros(400, 4), gt_iou=torch.zeros(400),
    )
    objects = BankedObjects(
        features=torch.from_numpy(gt + rng.normal(0, 0.3, gt.shape).astype(np.float32)),
        labels=torch.tensor([0] * 20 + [1] * 20),
    )
    return proposals, objects


def test_svms_with_hard_negative_mining_separate_the_classes():
    head = _head(initial_negatives=20, hard_negative_rounds=5, svm_c=1.0)
    proposals, objects = _svm_bank(np.random.default_rng(0))
    summary = head.fit_svms(proposals, objects)
    assert all(s["negatives"] > 20 for s in summary)  # mining added negatives beyond the random start
    score = objects.features @ head.svm_weight.T + head.svm_bias
    neg = proposals.features @ head.svm_weight.T + head.svm_bias
    assert (score[:20, 0] > 0).all() and (score[20:, 1] > 0).all()
    assert (neg[:, 0] < 0).float().mean() > 0.95 and (neg[:, 1] < 0).float().mean() > 0.95
    # every mined negative scored above -1 in an earlier round; none is left inside the margin of class 1
    assert (neg[:, 1] > -1).sum() <= summary[1]["negatives"]


def test_a_class_without_positives_keeps_a_zero_svm():
    head = _head()
    proposals, objects = _svm_bank(np.random.default_rng(1))
    summary = head.fit_svms(proposals, objects.replace(labels=torch.zeros_like(objects.labels)))
    assert summary[1]["positives"] == 0 and head.svm_weight[1].abs().sum() == 0


def test_box_regressors_are_ridge_regression():
    rng = np.random.default_rng(0)
    head = _head(bbox_ridge=2.0, bbox_iou_thresh=0.6)
    n, d = 200, 16
    boxes = torch.from_numpy(rng.uniform(0, 50, (n, 2)).astype(np.float32)).repeat(1, 2)
    boxes[:, 2:] += torch.from_numpy(rng.uniform(10, 40, (n, 2)).astype(np.float32))
    gt = boxes + torch.from_numpy(rng.normal(0, 2, (n, 4)).astype(np.float32))
    proposals = BankedProposals(
        proposal_boxes=boxes, features=torch.from_numpy(rng.normal(0, 1, (n, d)).astype(np.float32)),
        class_iou=torch.zeros(n, 2), gt_labels=torch.tensor([0] * 150 + [1] * 50), gt_boxes=gt,
        gt_iou=torch.tensor([0.9] * 140 + [0.3] * 10 + [0.8] * 50),
    )
    counts = head.fit_box_regressors(proposals)
    assert counts == [140, 50]
    from sklearn.linear_model import Ridge

    targets = head.box_coder.encode(gt, boxes).numpy()
    for c, rows in ((0, slice(0, 140)), (1, slice(150, 200))):
        # the bias is penalized too in detkit's closed form: append a constant feature, no intercept
        x = np.concatenate([proposals.features.numpy()[rows], np.ones((len(range(200)[rows]), 1))], axis=1)
        ref = Ridge(alpha=2.0, fit_intercept=False).fit(x, targets[rows])
        np.testing.assert_allclose(head.bbox_weight[c].numpy(), ref.coef_.T, atol=1e-4)


class _FixedProposals(Proposer):
    """Ground-truth-like boxes plus background windows, for tests."""

    needs_features = False

    def forward(self, images, features, targets=None):
        out = []
        for h, w in images.image_sizes:
            ys, xs = torch.meshgrid(torch.arange(0, h - 16, 8.0), torch.arange(0, w - 16, 8.0), indexing="ij")
            small = torch.stack([xs, ys, xs + 16, ys + 16], -1).reshape(-1, 4)
            big = torch.stack([xs, ys, xs + 32, ys + 32], -1).reshape(-1, 4).clamp(max=float(min(h, w)))
            boxes = torch.cat([small, big])
            out.append(Proposals(boxes, torch.linspace(1, 0, boxes.shape[0])))
        return out, {}


def _rcnn(num_classes: int = 2):
    registry = load_plugins([], autoload=False).registry
    registry.register("proposer", "fixed_test", _FixedProposals)
    model = {
        "preprocess": {"min_size": 64, "max_size": 64, "size_divisible": 32},
        "backbone": {"name": "resnet18", "width": 8, "out_features": ["c5"]},
        "proposer": {"name": "fixed_test"},
        "region_extractor": {"name": "warped_crops", "crop_size": 32, "context_padding": 4},
        "roi_head": {"name": "rcnn", "representation_size": 16, "batch_size_per_image": 16, "initial_negatives": 50},
        "postprocess": {"name": "nms", "score_thresh": 0.0, "nms_thresh": 0.3, "detections_per_img": 20},
    }
    return build_rcnn(model, registry, num_classes=num_classes)


def _batch():
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [
        Targets(boxes=torch.tensor([[8.0, 8.0, 24.0, 24.0]]), labels=torch.tensor([0])),
        Targets(boxes=torch.tensor([[16.0, 16.0, 48.0, 48.0]]), labels=torch.tensor([1])),
    ]
    return Batch(images=images, targets=targets, image_ids=[1, 2], file_names=["a.png", "b.png"])


def test_rcnn_trains_fits_and_detects_end_to_end():
    detector = _rcnn()
    batch = _batch()
    detector.train()
    _, losses = detector(batch.images, batch.targets)
    assert set(losses) == {"loss_rcnn_cls"} and torch.isfinite(losses["loss_rcnn_cls"])
    losses["loss_rcnn_cls"].backward()
    assert detector.roi_head.network.layer4[0].conv1.weight.grad is not None  # the CNN on crops is fine-tuned
    summary = detector.finish_training([batch, Batch([], [], [], [])], device=torch.device("cpu"))
    assert bool(detector.roi_head.fitted)
    assert [s["positives"] for s in summary["svm"]] == [1, 1]
    assert len(summary["bbox"]) == 2 and summary["bbox"][0] >= 1  # the objects' own boxes are among the proposals
    detector.eval()
    with torch.no_grad():
        detections, losses = detector(batch.images)
    assert losses == {} and len(detections) == 2
    for d in detections:
        assert d.boxes.shape[1] == 4 and ((d.scores >= 0) & (d.scores <= 1)).all()
    # a fitted model saves and restores its SVMs and regressors with its weights
    restored = _rcnn()
    restored.load_state_dict(detector.state_dict())
    assert bool(restored.roi_head.fitted)
    torch.testing.assert_close(restored.roi_head.svm_weight, detector.roi_head.svm_weight)


def test_rcnn_handles_an_image_without_objects_and_rejects_feature_proposers():
    detector = _rcnn()
    batch = _batch()
    batch.targets[0] = Targets()
    detector.train()
    _, losses = detector(batch.images, batch.targets)
    assert torch.isfinite(losses["loss_rcnn_cls"])
    registry = load_plugins([], autoload=False).registry
    with pytest.raises(ConfigError, match="pixel proposer"):
        build_rcnn(
            {"proposer": {"name": "rpn"}, "preprocess": {}, "postprocess": {}}, registry, num_classes=2
        )


def test_region_bank_gathers_per_class_iou():
    detector = _rcnn().eval()
    batch = _batch()
    images, targets = detector.preprocess(batch.images, batch.targets)
    bank = RegionBank()
    proposals = [Proposals(torch.tensor([[8.0, 8.0, 24.0, 24.0], [40.0, 40.0, 60.0, 60.0]]), torch.ones(2))] * 2
    detector.roi_head.gather(images, proposals, targets, bank)
    banked, objects = bank.cat()
    assert objects.features.shape == (2, 16) and banked.features.shape == (4, 16)
    torch.testing.assert_close(banked.class_iou[0], torch.tensor([1.0, 0.0]))
    assert banked.gt_labels.tolist()[:1] == [0] and banked.gt_iou[1] == 0
