"""The typed containers of detkit.structures: the per-instance contract, pixel access, pyramids, target checks."""

import pytest
import torch

from detkit.errors import DataError
from detkit.stages import ResizeNormalize
from detkit.structures import (
    Detections,
    FeatureMaps,
    ImageBatch,
    Proposals,
    SampledProposals,
    Targets,
    validate_targets,
)


def test_image_batch_rgb_undoes_normalization_and_padding():
    torch.manual_seed(0)
    images = [torch.rand(3, 20, 30), torch.rand(3, 24, 20)]
    pre = ResizeNormalize(min_size=20, max_size=1000, size_divisible=32)
    batch, _ = pre(images)
    assert batch.tensor.shape[-2:] == (32, 32)
    for i, image in enumerate(images):
        assert torch.allclose(batch.rgb(i), image, atol=1e-5)
        expected = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert (batch.rgb_uint8(i).astype(int) - expected.astype(int)).__abs__().max() <= 1
    plain = ImageBatch(torch.full((1, 3, 4, 4), 0.5), [(2, 3)], [(2, 3)])
    assert plain.rgb(0).shape == (3, 2, 3) and plain.to("cpu").pixel_mean is None


# ----------------------------------------------------------------------------- the Instances contract


def _detections(n: int, *, masks: bool = False) -> Detections:
    boxes = torch.arange(n * 4, dtype=torch.float32).reshape(n, 4)
    return Detections(
        boxes=boxes,
        scores=torch.linspace(0, 1, n),
        labels=torch.arange(n) % 3,
        masks=torch.rand(n, 5, 7) if masks else None,
    )


def test_indexing_applies_to_every_field():
    dets = _detections(5, masks=True)
    keep = torch.tensor([True, False, True, False, True])
    for index in (keep, torch.tensor([4, 0]), slice(1, 3)):
        part = dets[index]
        for name in ("boxes", "scores", "labels", "masks"):
            assert torch.equal(getattr(part, name), getattr(dets, name)[index])
    assert len(dets[2]) == 1 and torch.equal(dets[2].boxes, dets.boxes[2:3])  # an int keeps the dimension
    assert len(dets[-1]) == 1 and torch.equal(dets[-1].scores, dets.scores[-1:])
    assert dets[torch.zeros(5, dtype=torch.bool)].masks.shape == (0, 5, 7)


def test_optional_fields_stay_none():
    dets = _detections(3)
    assert dets[[0, 2]].masks is None and Detections.cat([dets, dets]).masks is None
    assert dets.to("cpu").masks is None


def test_cat_concatenates_every_field_in_order():
    a, b = _detections(2, masks=True), _detections(3, masks=True)
    both = Detections.cat([a, b])
    assert len(both) == 5
    assert torch.equal(both.boxes, torch.cat([a.boxes, b.boxes])) and torch.equal(both.masks[2:], b.masks)


def test_cat_with_a_field_missing_in_some_items_is_an_error():
    with pytest.raises(ValueError, match="'masks' is missing in some items"):
        Detections.cat([_detections(2, masks=True), _detections(1)])
    with pytest.raises(ValueError, match="at least one"):
        Detections.cat([])


def test_rows_of_every_field_must_match_the_first():
    with pytest.raises(ValueError, match=r"Detections.scores has 2 rows but boxes has 3"):
        Detections(boxes=torch.zeros(3, 4), scores=torch.zeros(2), labels=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="masks has 1 rows"):
        Targets(boxes=torch.zeros(2, 4), labels=torch.zeros(2, dtype=torch.int64), masks=torch.zeros(1, 4, 4))
    # the length comes from the first field, whatever it is called
    with pytest.raises(ValueError, match="gt_labels has 1 rows but proposal_boxes has 2"):
        SampledProposals(
            proposal_boxes=torch.zeros(2, 4), gt_labels=torch.zeros(1, dtype=torch.int64),
            gt_boxes=torch.zeros(2, 4), gt_index=torch.zeros(2, dtype=torch.int64),
        )


def test_empty_defaults_and_replace():
    for empty in (Targets(), Proposals(), Detections(), SampledProposals()):
        assert len(empty) == 0 and len(type(empty).cat([empty, empty])) == 0
    dets = _detections(2)
    moved = dets.replace(boxes=dets.boxes + 1)
    assert torch.equal(moved.boxes, dets.boxes + 1) and moved.scores is dets.scores


def test_targets_without_crowd():
    t = Targets(boxes=torch.zeros(3, 4), labels=torch.tensor([0, 1, 2]), iscrowd=torch.tensor([0, 1, 0]))
    assert t.without_crowd().labels.tolist() == [0, 2]
    assert Targets(boxes=torch.zeros(1, 4), labels=torch.tensor([1])).without_crowd().labels.tolist() == [1]


def test_sampled_proposals_positive():
    sampled = SampledProposals(
        proposal_boxes=torch.rand(4, 4), gt_labels=torch.tensor([2, -1, 0, -1]),
        gt_boxes=torch.rand(4, 4), gt_index=torch.tensor([1, 0, 0, 0]),
    )
    positive = sampled.positive()
    assert positive.gt_labels.tolist() == [2, 0]
    assert torch.equal(positive.proposal_boxes, sampled.proposal_boxes[[0, 2]])
    assert SampledProposals.BACKGROUND == -1 and (sampled.gt_labels + 1).tolist() == [3, 0, 1, 0]


# ----------------------------------------------------------------------------- feature pyramids


def test_feature_pyramid_names_levels_and_scales():
    level0 = FeatureMaps({"c3": torch.zeros(1, 2, 8, 8), "c4": torch.zeros(1, 2, 4, 4)}, {"c3": 8, "c4": 16})
    level1 = FeatureMaps({"c3": torch.zeros(1, 2, 4, 4), "c4": torch.zeros(1, 2, 2, 2)}, {"c3": 8, "c4": 16})
    pyramid = FeatureMaps.pyramid([level0, level1], [(1.0, 1.0), (0.5, 0.48)])
    assert pyramid.names() == ["c3@0", "c4@0", "c3@1", "c4@1"]
    assert pyramid.levels("c3") == ["c3@0", "c3@1"] and pyramid.levels("c5") == []
    assert pyramid.image_scale("c4@1") == (0.5, 0.48) and pyramid.strides["c4@1"] == 16
    assert pyramid["c3@1"].shape == (1, 2, 4, 4) and pyramid.to("cpu").image_scales == pyramid.image_scales
    # a plain container: every map is its own only level, at scale 1
    assert level0.levels("c3") == ["c3"] and level0.image_scale("c3") == (1.0, 1.0)
    with pytest.raises(ValueError):
        FeatureMaps.pyramid([level0], [(1.0, 1.0), (0.5, 0.5)])


# ----------------------------------------------------------------------------- target checks


def test_validate_targets_accepts_good_and_empty_targets():
    validate_targets([Targets(), Targets(boxes=torch.tensor([[0.0, 0.0, 1.0, 2.0]]), labels=torch.tensor([0]))])


@pytest.mark.parametrize(
    "box", [[5.0, 5.0, 5.0, 9.0], [5.0, 5.0, 9.0, 4.0], [0.0, float("nan"), 3.0, 3.0], [0.0, 0.0, float("inf"), 3.0]]
)
def test_validate_targets_names_the_image_and_the_degenerate_box(box):
    good = Targets(boxes=torch.tensor([[0.0, 0.0, 4.0, 4.0]]), labels=torch.tensor([0]))
    bad = Targets(boxes=torch.tensor([[1.0, 1.0, 3.0, 3.0], box]), labels=torch.tensor([0, 1]))
    with pytest.raises(DataError, match=r"targets of image 1: box 1 \[") as info:
        validate_targets([good, bad])
    assert "degenerate" in str(info.value)


def test_validate_targets_rejects_a_bad_box_shape():
    with pytest.raises(DataError, match=r"shape \(G, 4\)"):
        validate_targets([Targets(boxes=torch.zeros(2, 3), labels=torch.zeros(2, dtype=torch.int64))])
