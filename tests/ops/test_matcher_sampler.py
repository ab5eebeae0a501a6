"""Matcher and sampler invariants."""

import torch

from detkit.ops import BalancedSampler, Matcher


def test_matcher_thresholds_hand_case():
    quality = torch.tensor([[0.9, 0.5, 0.1, 0.35], [0.2, 0.65, 0.0, 0.1]])
    m = Matcher(high=0.7, low=0.3)
    assert m(quality).tolist() == [0, Matcher.BETWEEN, Matcher.BELOW_LOW, Matcher.BETWEEN]


def test_matcher_low_quality_matches_restore_best_prediction_per_gt():
    quality = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.65, 0.0]])
    # gt 1's best prediction (1, IoU .65) is below 0.7 but kept for it
    assert Matcher(high=0.7, low=0.3, allow_low_quality_matches=True)(quality).tolist() == [0, 1, -1]


def test_matcher_ties_all_kept():
    quality = torch.tensor([[0.4, 0.4, 0.1]])
    assert Matcher(high=0.7, low=0.3, allow_low_quality_matches=True)(quality).tolist() == [0, 0, -1]


def test_matcher_no_gt_and_no_predictions():
    m = Matcher(high=0.5, low=0.5)
    assert m(torch.zeros((0, 4))).tolist() == [-1] * 4
    assert m(torch.zeros((3, 0))).numel() == 0


def test_matcher_every_match_meets_high_threshold():
    g = torch.Generator().manual_seed(0)
    quality = torch.rand(5, 200, generator=g)
    matches = Matcher(high=0.7, low=0.3)(quality)
    best = quality.max(dim=0).values
    assert bool((best[matches >= 0] >= 0.7).all())
    assert bool((best[matches == -1] < 0.3).all())
    assert bool(((best[matches == -2] >= 0.3) & (best[matches == -2] < 0.7)).all())


def test_sampler_invariants():
    torch.manual_seed(0)
    labels = torch.tensor([1] * 10 + [0] * 500 + [-1] * 50)
    pos, neg = BalancedSampler(batch_size_per_image=64, positive_fraction=0.25)(labels)
    assert pos.numel() == 10  # fewer positives than the quota: all of them
    assert neg.numel() == 54  # the rest of the batch is negatives
    assert bool((labels[pos] == 1).all()) and bool((labels[neg] == 0).all())
    assert len(set(pos.tolist())) == pos.numel() and len(set(neg.tolist())) == neg.numel()


def test_sampler_positive_quota_and_scarce_negatives():
    labels = torch.tensor([2] * 100 + [0] * 5)
    pos, neg = BalancedSampler(batch_size_per_image=40, positive_fraction=0.5)(labels)
    assert (pos.numel(), neg.numel()) == (20, 5)
    assert BalancedSampler(batch_size_per_image=8, positive_fraction=0.5)(torch.full((4,), -1))[0].numel() == 0
