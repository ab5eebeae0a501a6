"""ProposalSampler: the RoI heads' training samples, against hand-computed IoUs."""

import torch

from detkit.stages import ProposalSampler
from detkit.structures import Proposals, SampledProposals, Targets


def _sampler(**kwargs) -> ProposalSampler:
    args = dict(fg_iou_thresh=0.5, bg_iou_thresh=0.3, batch_size_per_image=100, positive_fraction=0.5,
                add_gt_proposals=False)
    args.update(kwargs)
    return ProposalSampler(**args)


# object 0: [0, 0, 10, 10] class 2; object 1 (crowd): [50, 50, 90, 90] class 1; object 2: [20, 0, 30, 10] class 0
TARGETS = Targets(
    boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 90.0, 90.0], [20.0, 0.0, 30.0, 10.0]]),
    labels=torch.tensor([2, 1, 0]),
    iscrowd=torch.tensor([False, True, False]),
)
PROPOSALS = Proposals(
    boxes=torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 with object 0 -> class 2
            [0.0, 0.0, 10.0, 16.0],  # IoU 100/160 = 0.625 -> class 2
            [0.0, 0.0, 10.0, 25.0],  # IoU 0.4 -> between: never sampled
            [20.0, 0.0, 30.0, 12.0],  # IoU 100/120 with object 2 (index 1 without the crowd) -> class 0
            [50.0, 50.0, 90.0, 90.0],  # only the crowd box: background
            [100.0, 100.0, 110.0, 110.0],  # nothing -> background
        ]
    ),
    objectness=torch.ones(6),
)


def _by_box(sampled: SampledProposals) -> dict[tuple[float, ...], tuple[int, int, list[float]]]:
    return {
        tuple(b.tolist()): (int(label), int(index), box.tolist())
        for b, label, index, box in zip(sampled.proposal_boxes, sampled.gt_labels, sampled.gt_index, sampled.gt_boxes)
    }


def test_labels_indices_and_boxes_by_hand():
    (sampled,) = _sampler()([PROPOSALS], [TARGETS])
    assert len(sampled) == 5  # every proposal but the ignored one
    got = _by_box(sampled)
    zero = [0.0] * 4
    assert got == {
        (0.0, 0.0, 10.0, 10.0): (2, 0, [0.0, 0.0, 10.0, 10.0]),
        (0.0, 0.0, 10.0, 16.0): (2, 0, [0.0, 0.0, 10.0, 10.0]),
        (20.0, 0.0, 30.0, 12.0): (0, 1, [20.0, 0.0, 30.0, 10.0]),
        (50.0, 50.0, 90.0, 90.0): (SampledProposals.BACKGROUND, 0, zero),
        (100.0, 100.0, 110.0, 110.0): (SampledProposals.BACKGROUND, 0, zero),
    }
    assert (sampled.gt_labels[:3] >= 0).all() and (sampled.gt_labels[3:] < 0).all()  # positives first


def test_the_balance_and_the_ground_truth_proposals():
    torch.manual_seed(0)
    (sampled,) = _sampler(batch_size_per_image=4, positive_fraction=0.25, add_gt_proposals=True)(
        [PROPOSALS], [TARGETS]
    )
    # at most 4 samples, 1 of them positive (of 5 with the two objects' own boxes); only 2 background
    # proposals exist, so 3 in all: negatives are never padded with ignored proposals
    assert len(sampled) == 3 and int((sampled.gt_labels >= 0).sum()) == 1
    (more,) = _sampler(batch_size_per_image=6, positive_fraction=0.5, add_gt_proposals=True)([PROPOSALS], [TARGETS])
    assert int((more.gt_labels >= 0).sum()) == 3 and len(more) == 5


def test_empty_images_sample_background_only():
    (no_objects,) = _sampler()([PROPOSALS], [Targets()])
    assert len(no_objects) == 6 and (no_objects.gt_labels == SampledProposals.BACKGROUND).all()
    (nothing,) = _sampler(add_gt_proposals=True)([Proposals()], [Targets()])
    assert len(nothing) == 0
    (only_gt,) = _sampler(add_gt_proposals=True)([Proposals()], [TARGETS])
    assert sorted(only_gt.gt_labels.tolist()) == [0, 2]  # the crowd object is not a proposal
