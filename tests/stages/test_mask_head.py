"""The Mask R-CNN mask branch: targets, loss, paste-back, upsampling options, empty cases.

Oracles: a slow per-box RoIAlign written from its definition (mask targets), a
per-pixel bilinear paste (paste-back), the loss on hand-picked channels.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from detkit_mask_head import MaskRCNNHead, mask_loss, mask_targets

from detkit import ConfigError
from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.importers import CONFIG_DIR
from detkit.plugins import load_plugins
from detkit.stages.postprocess import paste_masks
from detkit.structures import FeatureMaps, ImageBatch, Proposals, SampledProposals, Targets

# ----------------------------------------------------------------------------- slow references


def _bilinear_roi_align_sample(image, y, x):
    """RoIAlign's bilinear read of one point (torchvision's border rules), ``image`` (H, W)."""
    h, w = image.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return float(
        (1 - ly) * (1 - lx) * image[y0, x0] + (1 - ly) * lx * image[y0, x1]
        + ly * (1 - lx) * image[y1, x0] + ly * lx * image[y1, x1]
    )


def slow_crop_and_resize(mask, box, size):
    """Average of ceil(side / size)^2 bilinear samples per bin, aligned=False (no half-pixel shift)."""
    mask = mask.double()
    x1, y1, x2, y2 = (float(v) for v in box)
    roi_w, roi_h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    bin_w, bin_h = roi_w / size, roi_h / size
    grid_w, grid_h = math.ceil(roi_w / size), math.ceil(roi_h / size)
    out = torch.zeros(size, size, dtype=torch.float64)
    for py in range(size):
        for px in range(size):
            total = 0.0
            for iy in range(grid_h):
                y = y1 + py * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = x1 + px * bin_w + (ix + 0.5) * bin_w / grid_w
                    total += _bilinear_roi_align_sample(mask, y, x)
            out[py, px] = total / (grid_h * grid_w)
    return out


def slow_paste(mask, box, size):
    """Pad by 1, grow the box by (M+2)/M, truncate, then per image pixel a bilinear read."""
    height, width = size
    m = mask.shape[-1]
    padded = F.pad(mask.double(), (1, 1, 1, 1))
    s = m + 2
    cx, cy = (float(box[0]) + float(box[2])) / 2, (float(box[1]) + float(box[3])) / 2
    hw, hh = (float(box[2]) - float(box[0])) / 2 * s / m, (float(box[3]) - float(box[1])) / 2 * s / m
    x1, y1, x2, y2 = int(cx - hw), int(cy - hh), int(cx + hw), int(cy + hh)
    w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    out = torch.zeros(height, width, dtype=torch.float64)
    for y in range(max(y1, 0), min(y2 + 1, height)):
        sy = max((y - y1 + 0.5) * s / h - 0.5, 0.0)
        r0 = int(sy)
        r1, ly = min(r0 + 1, s - 1), sy - r0
        for x in range(max(x1, 0), min(x2 + 1, width)):
            sx = max((x - x1 + 0.5) * s / w - 0.5, 0.0)
            c0 = int(sx)
            c1, lx = min(c0 + 1, s - 1), sx - c0
            out[y, x] = ((1 - ly) * ((1 - lx) * padded[r0, c0] + lx * padded[r0, c1])
                         + ly * ((1 - lx) * padded[r1, c0] + lx * padded[r1, c1]))
    return out


# ----------------------------------------------------------------------------- targets


def test_mask_targets_match_slow_reference():
    gen = torch.Generator().manual_seed(0)
    gt_masks = (torch.rand(3, 40, 50, generator=gen) > 0.5).to(torch.uint8)
    # inside, the whole image, partly outside, smaller than a pixel
    boxes = torch.tensor(
        [[3.2, 4.7, 30.1, 22.9], [0.0, 0.0, 50.0, 40.0], [40.5, 30.2, 55.0, 44.0], [10.0, 10.0, 10.4, 10.3]]
    )
    gt_index = torch.tensor([2, 0, 1, 2])
    ours = mask_targets(gt_masks, boxes, gt_index, 9)
    assert ours.shape == (4, 9, 9)
    for r in range(4):
        ref = slow_crop_and_resize(gt_masks[gt_index[r]], boxes[r], 9)
        torch.testing.assert_close(ours[r].double(), ref, atol=1e-5, rtol=0)


def test_mask_targets_of_a_box_inside_one_region_are_constant():
    gt_masks = torch.zeros(2, 60, 60, dtype=torch.uint8)
    gt_masks[1, 10:50, 20:60] = 1
    boxes = torch.tensor([[22.0, 12.0, 56.0, 46.0], [22.0, 12.0, 56.0, 46.0]])
    out = mask_targets(gt_masks, boxes, torch.tensor([1, 0]), 28)
    assert torch.equal(out[0], torch.ones(28, 28)) and torch.equal(out[1], torch.zeros(28, 28))
    assert mask_targets(gt_masks, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 28).shape == (0, 28, 28)


# ----------------------------------------------------------------------------- loss


def test_loss_only_reads_the_ground_truth_class_channel():
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 4, 5, 5, generator=gen) * 1000).requires_grad_()
    labels = torch.tensor([2, 0, 3])
    targets = (torch.rand(3, 5, 5, generator=gen) > 0.5).float()
    chosen = torch.stack([logits[0, 2], logits[1, 0], logits[2, 3]])
    expected = F.binary_cross_entropy_with_logits(chosen, targets)
    loss = mask_loss(logits, labels, targets)
    torch.testing.assert_close(loss, expected)
    # hand-built: logit 0 everywhere on the gt channel gives log 2 whatever the target
    flat = torch.full((3, 4, 5, 5), 50.0)
    flat[[0, 1, 2], labels] = 0.0
    torch.testing.assert_close(mask_loss(flat, labels, targets), torch.tensor(math.log(2.0)))
    loss.backward()
    other = torch.ones(3, 4, dtype=torch.bool)
    other[[0, 1, 2], labels] = False
    assert torch.count_nonzero(logits.grad[other]) == 0


# ----------------------------------------------------------------------------- paste-back


def test_paste_masks_match_slow_reference():
    gen = torch.Generator().manual_seed(2)
    masks = torch.rand(4, 6, 6, generator=gen)
    # inside, over the top-left corner, over the bottom-right corner, smaller than a pixel
    boxes = torch.tensor(
        [[2.3, 3.1, 15.8, 12.2], [-5.0, -3.0, 8.0, 6.5], [18.0, 10.0, 40.0, 30.0], [7.0, 7.0, 7.2, 7.1]]
    )
    ours = paste_masks(masks, boxes, (20, 25))
    assert ours.shape == (4, 20, 25)
    for i in range(4):
        torch.testing.assert_close(ours[i].double(), slow_paste(masks[i], boxes[i], (20, 25)), atol=1e-5, rtol=0)


def test_paste_of_zero_masks():
    assert paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (7, 9)).shape == (0, 7, 9)


# ----------------------------------------------------------------------------- head


def _features(channels=8, size=64):
    gen = torch.Generator().manual_seed(3)
    maps = {f"p{k}": torch.randn(1, channels, size >> k, size >> k, generator=gen) for k in range(2, 6)}
    return ImageBatch(torch.zeros(1, 3, size, size), [(size, size)], [(size, size)]), FeatureMaps(
        maps, {f"p{k}": 2**k for k in range(2, 6)}
    )


@pytest.mark.parametrize("upsample", ["transpose", "nearest", "bilinear"])
def test_each_upsampling_gives_one_28x28_mask_per_class(upsample):
    head = MaskRCNNHead(in_channels=8, num_classes=3, conv_channels=8, upsample=upsample)
    batch, features = _features()
    boxes = [torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 60.0, 63.0]])]
    logits = head(batch, features, boxes)
    assert logits.shape == (2, 3, 28, 28)
    probs = head.predict(logits, torch.tensor([2, 0]))
    torch.testing.assert_close(probs, torch.stack([logits[0, 2], logits[1, 0]]).sigmoid())


def test_unknown_upsampling_is_an_error():
    with pytest.raises(ValueError, match="transpose"):
        MaskRCNNHead(in_channels=8, num_classes=3, upsample="deconv")


def test_head_loss_without_positives_is_zero_and_differentiable():
    head = MaskRCNNHead(in_channels=8, num_classes=3, conv_channels=8)
    batch, features = _features()
    empty = [torch.zeros(0, 4)]
    logits = head(batch, features, empty)
    assert logits.shape == (0, 3, 28, 28)
    targets = [Targets(masks=torch.zeros(0, 64, 64, dtype=torch.uint8))]
    loss = head.loss(logits, [SampledProposals()], targets)
    assert loss.item() == 0.0
    loss.backward()


# ----------------------------------------------------------------------------- inside a detector


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = load_config(
        CONFIG_DIR / "shapes_faster_rcnn.yaml", ["model.mask_head={name: mask_rcnn, conv_channels: 16}"]
    )
    return build_detector(config, load_plugins().registry, num_classes=4)


def test_roi_head_with_zero_positive_proposals(model):
    model.train()
    batch, _ = model.preprocess([torch.rand(3, 128, 128)])
    features = model.extract_features(batch.tensor)
    masks = torch.zeros(1, 128, 128, dtype=torch.uint8)
    masks[0, 100:120, 100:120] = 1
    target = Targets(boxes=torch.tensor([[100.0, 100, 120, 120]]), labels=torch.tensor([1]), masks=masks)
    far = Proposals(boxes=torch.tensor([[0.0, 0, 30, 30], [10.0, 0, 50, 40]]), objectness=torch.ones(2))
    model.roi_head.proposal_sampler.add_gt_proposals = False
    try:
        _, losses = model.roi_head(batch, features, [far], [target])
    finally:
        model.roi_head.proposal_sampler.add_gt_proposals = True
    assert losses["loss_roi_mask"].item() == 0.0
    sum(losses.values()).backward()
    # an image without objects at all, through the whole detector
    _, losses = model([torch.rand(3, 128, 128)], [Targets(masks=torch.zeros(0, 128, 128, dtype=torch.uint8))])
    assert torch.isfinite(losses["loss_roi_mask"]) and losses["loss_roi_mask"].item() == 0.0
    sum(losses.values()).backward()


def test_zero_detections_at_inference_give_empty_full_size_masks(model):
    model.eval()
    threshold = model.postprocess.score_thresh
    model.postprocess.score_thresh = 1.0
    try:
        with torch.no_grad():
            (dets,), _ = model([torch.rand(3, 90, 70)])
    finally:
        model.postprocess.score_thresh = threshold
    assert len(dets) == 0 and dets.masks is not None and dets.masks.shape == (0, 90, 70)


def test_inference_masks_are_full_size_probabilities(model):
    model.eval()
    with torch.no_grad():
        detections, _ = model([torch.rand(3, 90, 70), torch.rand(3, 1, 1), torch.zeros(3, 5, 300)])
    assert model.has_masks and len(detections[0]) > 0
    for dets, size in zip(detections, [(90, 70), (1, 1), (5, 300)]):
        assert dets.masks.shape == (len(dets), *size)
        assert bool((dets.masks >= 0).all() and (dets.masks <= 1).all())


def test_training_without_gt_masks_is_a_config_error(model):
    model.train()
    target = Targets(boxes=torch.tensor([[10.0, 10, 60, 60]]), labels=torch.tensor([1]))
    with pytest.raises(ConfigError, match="masks"):
        model([torch.rand(3, 128, 128)], [target])
