"""Proposal recall and AR against a brute-force reference; `detkit proposals` end to end."""

import json
import math
import sys
from textwrap import dedent

import pytest
import torch

from detkit.cli import main
from detkit.config import load_config
from detkit.data.coco import CocoDataset
from detkit.data.shapes import generate_shapes
from detkit.detectors import build_detector
from detkit.engine.checkpoint import save_checkpoint
from detkit.engine.proposals import ProposerTally, dense_candidates, parse_proposer_spec
from detkit.errors import ConfigError
from detkit.evaluation.proposals import (
    COCO_IOU_THRESHOLDS,
    ProposalRecall,
    best_iou_per_budget,
    proposal_budgets,
    recall_at_thresholds,
    summarize,
)
from detkit.importers import CONFIG_DIR
from detkit.ops import clip_boxes, scale_boxes
from detkit.plugins import load_plugins
from detkit.structures import Targets

# the concurrently written first-party proposers are not needed here
NO_WIP = ["-p", "no:detkit_selective_search", "-p", "no:detkit_sliding_window"]


# ----------------------------------------------------------------------------- reference


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference(images, budgets):
    """Recall and AR by loops: images of (gt, crowd, proposals) lists of python boxes."""
    best = []  # per object: best IoU per budget
    for gt, crowd, props in images:
        for g, is_crowd in zip(gt, crowd):
            if is_crowd:
                continue
            best.append([max([_iou(g, p) for p in props[:k]], default=0.0) for k in budgets])

    def recall(t, b):
        return sum(row[b] >= t for row in best) / len(best)

    r50 = [recall(0.5, b) for b in range(len(budgets))]
    r70 = [recall(0.7, b) for b in range(len(budgets))]
    ar = [sum(recall(t, b) for t in COCO_IOU_THRESHOLDS) / len(COCO_IOU_THRESHOLDS) for b in range(len(budgets))]
    return len(best), r50, r70, ar


def _random_boxes(gen, n, size=200.0):
    xy = torch.rand((n, 2), generator=gen) * size
    wh = torch.rand((n, 2), generator=gen) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_recall_and_ar_match_brute_force_reference():
    gen = torch.Generator().manual_seed(0)
    budgets = [1, 2, 5, 10, 20, 50, 64]
    acc = ProposalRecall(budgets)
    images = []
    for num_gt, num_props in [(5, 64), (3, 7), (0, 20), (4, 0), (8, 50)]:
        gt = _random_boxes(gen, num_gt)
        # proposals: jittered copies of the objects mixed with random boxes, so IoUs spread over [0, 1]
        near = gt[torch.randint(0, max(num_gt, 1), (num_props,), generator=gen)] if num_gt else _random_boxes(gen, 0)
        near = near + torch.randn(near.shape, generator=gen) * 6 if num_gt else _random_boxes(gen, num_props)
        props = torch.where(torch.rand((num_props, 1), generator=gen) < 0.7, near, _random_boxes(gen, num_props))
        crowd = torch.rand(num_gt, generator=gen) < 0.2
        acc.add(gt, props, crowd)
        images.append((gt.tolist(), crowd.tolist(), props.tolist()))
    summary = acc.summary()
    num_objects, r50, r70, ar = _reference(images, budgets)
    assert summary["num_objects"] == num_objects > 10
    assert summary["num_images"] == 5
    curve = summary["curve"]
    assert curve["proposals"] == budgets
    assert curve["recall@0.5"] == pytest.approx(r50, abs=1e-12)
    assert curve["recall@0.7"] == pytest.approx(r70, abs=1e-12)
    assert curve["AR"] == pytest.approx(ar, abs=1e-12)
    assert ar[0] < ar[-1] and 0 < ar[-1] < 1 and 0 < r70[-1] < r50[-1] < 1  # an informative fixture
    assert summary["recall@0.5"] == pytest.approx(r50[-1]) and summary["recall@0.7"] == pytest.approx(r70[-1])
    assert summary["AR@10"] == pytest.approx(ar[budgets.index(10)])
    assert summary["AR@100"] is None and summary["AR@1000"] is None  # beyond the largest budget


def test_best_iou_per_budget_one_object_known_ious():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    props = torch.tensor([
        [0.0, 0.0, 5.0, 5.0],  # IoU 0.25
        [0.0, 0.0, 10.0, 5.0],  # IoU 0.5 (counts at threshold 0.5: >=)
        [0.0, 0.0, 10.0, 7.5],  # IoU 0.75
        [50.0, 50.0, 60.0, 60.0],  # IoU 0
        [0.0, 0.0, 10.0, 10.0],  # IoU 1
    ])
    best = best_iou_per_budget(gt, props, [1, 2, 3, 4, 5, 100, 3])
    assert best.tolist() == [[0.25, 0.5, 0.75, 0.75, 1.0, 1.0, 0.75]]
    assert recall_at_thresholds(best, (0.5, 0.7)).tolist() == [[0, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]]
    # AR: the share of the 10 thresholds 0.50..0.95 each IoU reaches
    summary = summarize(best[:, :6], torch.tensor([100.0]), [1, 2, 3, 4, 5, 100])
    assert summary["curve"]["AR"] == pytest.approx([0.0, 0.1, 0.6, 0.6, 1.0, 1.0])
    assert summary["AR@10"] is None and summary["AR@100"] == 1.0


def test_size_breakdown_uses_coco_ranges_on_box_area():
    gt = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # small
        [100.0, 100.0, 132.0, 132.0],  # 32 x 32: medium (small is below 32^2)
        [200.0, 200.0, 250.0, 250.0],  # medium
        [300.0, 300.0, 400.0, 400.0],  # 96^2 < area: large
    ])
    props = gt[[1, 3]].clone()
    acc = ProposalRecall(proposal_budgets(1000))
    acc.add(gt, props)
    s = acc.summary()
    assert s["num_objects_by_size"] == {"small": 1, "medium": 2, "large": 1}
    assert (s["AR_small@1000"], s["AR_medium@1000"], s["AR_large@1000"]) == (0.0, 0.5, 1.0)
    assert s["AR@1000"] == 0.5 and s["AR@10"] == 0.5


def test_crowd_objects_are_not_scored():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    acc = ProposalRecall([1, 10])
    best = acc.add(gt, gt[:1].clone(), torch.tensor([False, True]))
    assert best.shape == (1, 2)
    s = acc.summary()
    assert s["num_objects"] == 1 and s["recall@0.5"] == 1.0 and s["curve"]["AR"] == [1.0, 1.0]


def test_empty_images():
    budgets = [1, 10]
    no_gt = best_iou_per_budget(torch.zeros((0, 4)), torch.tensor([[0.0, 0.0, 1.0, 1.0]]), budgets)
    no_props = best_iou_per_budget(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.zeros((0, 4)), budgets)
    assert no_gt.shape == (0, 2) and no_props.tolist() == [[0.0, 0.0]]
    acc = ProposalRecall(budgets)
    acc.add(torch.zeros((0, 4)), torch.zeros((0, 4)))
    s = acc.summary()  # nothing to recall: undefined, not 0 or 1
    assert s["num_images"] == 1 and s["num_objects"] == 0
    assert s["recall@0.5"] is None and s["AR@10"] is None and s["curve"]["AR"] == [None, None]
    assert ProposalRecall(budgets).summary()["num_objects"] == 0
    acc.add(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.zeros((0, 4)))  # an object and no proposals: missed
    assert acc.summary()["recall@0.5"] == 0.0
    with pytest.raises(ValueError):
        best_iou_per_budget(torch.zeros((0, 4)), torch.zeros((0, 4)), [0, 1])


def test_proposal_budgets():
    assert proposal_budgets(2000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]
    assert proposal_budgets(300) == [1, 2, 5, 10, 20, 50, 100, 200, 300]
    assert proposal_budgets(1) == [1]


def test_proposer_tally_means_leave_out_the_warm_up_image():
    tally = ProposerTally(ProposalRecall([1, 2]))
    objects = Targets(boxes=torch.tensor([[0.0, 0, 10, 10]]), labels=torch.tensor([0]))
    tally.add(objects, torch.tensor([[0.0, 0, 10, 10], [50.0, 50, 60, 60]]), 7, 9.0)  # warm-up: slow
    tally.add(objects, torch.tensor([[20.0, 20, 30, 30]]), 1, 1.0)
    tally.add(objects, torch.zeros((0, 4)), 0, 3.0)
    summary = tally.summary()
    assert summary["seconds_per_image"] == 2.0 and summary["timed_images"] == 2
    assert summary["proposals_per_image"] == 1.0 and summary["proposals_per_image_before_cap"] == pytest.approx(8 / 3)
    assert summary["num_images"] == 3 and summary["recall@0.5"] == pytest.approx(1 / 3)


def test_parse_proposer_spec():
    assert parse_proposer_spec("selective_search") == ("selective_search", {})
    assert parse_proposer_spec("selective_search:preset=quality,max_proposals=2000") == (
        "selective_search", {"preset": "quality", "max_proposals": 2000},
    )
    assert parse_proposer_spec("sliding_window:sizes=[32,64,128],ratios=[0.5, 1],flip=true") == (
        "sliding_window", {"sizes": [32, 64, 128], "ratios": [0.5, 1], "flip": True},
    )
    assert parse_proposer_spec("rpn:weights=runs/a b/best.pt") == ("rpn", {"weights": "runs/a b/best.pt"})
    for bad in ["", ":a=1", "x:a", "x:a=1,a=2", "x:a=[1,2", "x:a=1]", 'x:a="open']:
        with pytest.raises(ConfigError, match="--proposer"):
            parse_proposer_spec(bad)


# ----------------------------------------------------------------------------- the command

GRID_PLUGIN = """
    import torch

    import detkit
    from detkit.stages import Proposer
    from detkit.structures import Proposals


    def grid_boxes(height, width, sizes, step):
        boxes = []
        for s in sizes:
            ys = torch.arange(0, max(height - s, 0) + 1, step, dtype=torch.float32)
            xs = torch.arange(0, max(width - s, 0) + 1, step, dtype=torch.float32)
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            boxes.append(torch.stack([xx, yy, xx + s, yy + s], dim=-1).reshape(-1, 4))
        return torch.cat(boxes)


    class FixedGrid(Proposer):
        needs_features = False

        def __init__(self, *, sizes=(16,), step=8):
            super().__init__()
            self.sizes, self.step = [int(s) for s in sizes], int(step)

        def forward(self, images, features, targets=None):
            out = []
            for h, w in images.image_sizes:
                boxes = grid_boxes(h, w, self.sizes, self.step)
                out.append(Proposals(boxes=boxes, objectness=torch.linspace(1.0, 0.0, len(boxes))))
            return out, {}


    class FlakyGrid(FixedGrid):
        # FixedGrid that fails on its fail_on-th call

        def __init__(self, *, fail_on=2, **kwargs):
            super().__init__(**kwargs)
            self.fail_on, self.calls = int(fail_on), 0

        def forward(self, images, features, targets=None):
            self.calls += 1
            if self.calls == self.fail_on:
                raise RuntimeError("cannot handle this image")
            return super().forward(images, features, targets)


    @detkit.hookimpl
    def detkit_add_components(registry):
        registry.register("proposer", "fixed_grid", FixedGrid)
        registry.register("proposer", "flaky_grid", FlakyGrid)
"""


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Five 64 px shapes images; the third is corrupt."""
    root = tmp_path_factory.mktemp("shapes")
    ann = generate_shapes(root, num_train=0, num_val=5, image_size=64, seed=3)["val"]
    (root / "val" / "000002.png").write_bytes(b"not a png")
    return ann


@pytest.fixture(scope="module")
def grid_plugin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "proposals_grid_plugin.py").write_text(dedent(GRID_PLUGIN), encoding="utf-8")
    sys.path.insert(0, str(folder))
    import proposals_grid_plugin

    yield proposals_grid_plugin
    sys.path.remove(str(folder))
    sys.modules.pop("proposals_grid_plugin", None)


def _expected(dataset, boxes_for, budgets, max_images=None):
    acc = ProposalRecall(budgets)
    for i in range(len(dataset) if max_images is None else max_images):
        try:
            sample = dataset[i]
        except Exception:
            continue
        acc.add(sample.targets.boxes, boxes_for(sample)[: budgets[-1]], sample.targets.iscrowd)
    return acc.summary()


def _same(a, b, tol=1e-9):
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y, tol) for x, y in zip(a, b))
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= tol)


def _assert_same_numbers(result, expected, tol=1e-9):
    for key in ["num_images", "num_objects", "recall@0.5", "recall@0.7", "AR@10", "AR@100", "AR_medium@1000"]:
        assert _same(result[key], expected[key], tol), key
    assert result["curve"].keys() == expected["curve"].keys()
    for key, values in expected["curve"].items():
        assert _same(result["curve"][key], values, tol), key


def test_proposals_command_scores_a_plugin_proposer(shapes, grid_plugin, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["-q", "proposals", "--data", str(shapes), "--max-proposals", "300", "--out", str(out),
            "--proposer", "fixed_grid:sizes=[16,32],step=8", "--proposer", "fixed_grid:sizes=[32,64],step=16",
            "--size", "128", "-p", "proposals_grid_plugin", *NO_WIP]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "skipping image 2" in captured.err and "000002.png" in captured.err
    assert "fixed_grid:sizes=[16,32],step=8" in captured.out and "AR@100" in captured.out
    report = json.loads((out / "proposals.json").read_text())
    assert (out / "recall.png").stat().st_size > 0
    assert report["dataset"]["num_images"] == 4 and report["dataset"]["num_images_skipped"] == 1
    assert report["format"] == "detkit.proposals/1"
    assert (report["dataset"]["images_evaluated"], report["dataset"]["images_total"]) == (4, 5)
    assert "scored on 4 of 5 images, 1 skipped (first: " in captured.out
    assert report["settings"]["max_proposals"] == 300
    own, doubled = report["proposers"]

    dataset = CocoDataset(ann_file=shapes)
    budgets = proposal_budgets(300)
    # the grids are drawn on the 128 px resized images; scored in the 64 px originals
    _assert_same_numbers(own, _expected(
        dataset, lambda s: scale_boxes(grid_plugin.grid_boxes(128, 128, [16, 32], 8), (128, 128), (64, 64)), budgets
    ))
    _assert_same_numbers(doubled, _expected(dataset, lambda s: grid_plugin.grid_boxes(64, 64, [16, 32], 8), budgets))
    assert own["curve"]["proposals"] == budgets
    assert own["proposals_per_image"] == min(300, len(grid_plugin.grid_boxes(128, 128, [16, 32], 8)))
    assert own["seconds_per_image"] > 0 and own["timed_images"] == 3  # 4 images, the first warms up
    assert doubled["num_objects"] == own["num_objects"] > 0
    assert own["preprocess"] == {"min_size": 128, "max_size": None}


def test_proposals_maps_boxes_back_to_the_original_image(shapes, grid_plugin, tmp_path, capsys):
    """A grid drawn on 2x resized images equals the half-size grid drawn on the originals."""
    common = ["-q", "proposals", "--data", str(shapes), "--max-proposals", "50", "-p", "proposals_grid_plugin",
              *NO_WIP]
    assert main([*common, "--out", str(tmp_path / "a"), "--proposer", "fixed_grid:sizes=[16],step=8"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--size", "128",
                 "--proposer", "fixed_grid:sizes=[32],step=16"]) == 0
    a = json.loads((tmp_path / "a" / "proposals.json").read_text())["proposers"][0]
    b = json.loads((tmp_path / "b" / "proposals.json").read_text())["proposers"][0]
    expected = _expected(CocoDataset(ann_file=shapes), lambda s: grid_plugin.grid_boxes(64, 64, [16], 8),
                         proposal_budgets(50))
    _assert_same_numbers(a, expected)
    _assert_same_numbers(b, expected)
    assert a["preprocess"] == "each image at its own size"


def test_an_image_a_proposer_fails_on_is_skipped_for_every_proposer(shapes, grid_plugin, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["-q", "proposals", "--data", str(shapes), "--max-proposals", "50", "--out", str(out),
                 "--proposer", "fixed_grid", "--proposer", "flaky_grid:fail_on=2", "-p", "proposals_grid_plugin",
                 *NO_WIP]) == 0
    err = capsys.readouterr().err
    assert "skipping image 1" in err and "flaky_grid" in err and "cannot handle this image" in err
    assert "Traceback" not in err
    report = json.loads((out / "proposals.json").read_text())
    assert [s["index"] for s in report["dataset"]["skipped"]] == [1, 2]  # failed proposer, corrupt file
    dataset = CocoDataset(ann_file=shapes)
    boxes = lambda s: grid_plugin.grid_boxes(64, 64, [16], 8)  # noqa: E731
    acc = ProposalRecall(proposal_budgets(50))
    for i in (0, 3, 4):
        sample = dataset[i]
        acc.add(sample.targets.boxes, boxes(sample)[:50], sample.targets.iscrowd)
    for result in report["proposers"]:  # both scored on the same three images
        _assert_same_numbers(result, acc.summary())


@pytest.fixture(scope="module")
def rpn_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / "shapes_faster_rcnn.yaml", ["train.device=cpu"])
    model = build_detector(config, load_plugins(["no:detkit_selective_search", "no:detkit_sliding_window"]).registry,
                           num_classes=4)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model=model, config=config, class_names=["circle", "square", "triangle", "ellipse"])
    return path, model.eval()


def test_proposals_command_scores_a_checkpoint_rpn(shapes, rpn_checkpoint, tmp_path, capsys):
    path, model = rpn_checkpoint
    out = tmp_path / "out"
    spec = f"rpn:weights={path},post_nms_top_n_test=80"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only add overhead on a busy machine
    try:
        assert main(["-q", "proposals", "--data", str(shapes), "--proposer", spec, "--max-proposals", "100",
                     "--max-images", "2", "--out", str(out), *NO_WIP]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((out / "proposals.json").read_text())["proposers"][0]
    assert result["proposer_config"]["post_nms_top_n_test"] == 80
    assert 0 < result["proposals_per_image"] <= 80 and result["timed"] == "backbone + proposer"

    model.proposer.post_nms_top_n["test"] = 80

    def rpn_boxes(sample):
        with torch.no_grad():
            batch, _ = model.preprocess([sample.image])
            proposals, _ = model.proposer(batch, model.extract_features(batch.tensor))
        return scale_boxes(proposals[0].boxes, batch.image_sizes[0], batch.original_sizes[0])

    expected = _expected(CocoDataset(ann_file=shapes), rpn_boxes, proposal_budgets(100), max_images=2)
    assert expected["num_images"] == 2
    _assert_same_numbers(result, expected, tol=1e-6)


def test_dense_candidates_keep_each_distinct_box_once_with_its_best_score():
    boxes = torch.tensor([[0, 0, 4, 4], [1, 1, 5, 5], [0, 0, 4, 4], [2, 2, 3, 3], [1, 1, 5, 5]], dtype=torch.float32)
    scores = torch.tensor([0.2, 0.9, 0.6, 0.1, 0.3])
    kept, best = dense_candidates(boxes, scores)
    reference = {}  # box -> best score, the slow way
    for box, score in zip(boxes.tolist(), scores.tolist()):
        reference[tuple(box)] = max(score, reference.get(tuple(box), -1.0))
    assert {tuple(b): s for b, s in zip(kept.tolist(), best.tolist())} == pytest.approx(reference)
    empty_boxes, empty_scores = dense_candidates(torch.zeros(0, 4), torch.zeros(0))
    assert empty_boxes.shape == (0, 4) and empty_scores.shape == (0,)


@pytest.fixture(scope="module")
def ssd_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / "shapes_ssd.yaml", ["train.device=cpu"])
    model = build_detector(config, load_plugins(NO_WIP[1::2]).registry, num_classes=4)
    path = tmp_path_factory.mktemp("ssd") / "ssd.pt"
    save_checkpoint(path, model=model, config=config, class_names=["circle", "square", "triangle", "ellipse"])
    return path, model.eval()


def test_proposals_command_scores_a_dense_head_before_its_nms(shapes, ssd_checkpoint, rpn_checkpoint, tmp_path,
                                                               capsys):
    path, model = ssd_checkpoint
    out = tmp_path / "out"
    argv = ["-q", "proposals", "--data", str(shapes), "--proposer", f"dense:weights={path},topk_candidates=50",
            "--proposer", f"rpn:weights={rpn_checkpoint[0]}", "--max-proposals", "100", "--max-images", "2",
            "--out", str(out), *NO_WIP]
    assert main(argv) == 0
    dense, rpn = json.loads((out / "proposals.json").read_text())["proposers"]
    assert dense["dense_head_config"]["topk_candidates"] == 50 and dense["timed"] == "backbone + dense head"
    assert rpn["num_images"] == dense["num_images"] == 2  # one- and two-stage on the same images

    model.dense_head.topk_candidates = 50

    def dense_boxes(sample):
        with torch.no_grad():
            batch, _ = model.preprocess([sample.image])
            raw, _ = model.dense_head(batch, model.extract_features(batch.tensor))
        boxes, scores = dense_candidates(clip_boxes(raw[0].boxes, batch.image_sizes[0]), raw[0].scores)
        order = torch.sort(scores, descending=True, stable=True).indices
        return scale_boxes(boxes[order], batch.image_sizes[0], batch.original_sizes[0])

    expected = _expected(CocoDataset(ann_file=shapes), dense_boxes, proposal_budgets(100), max_images=2)
    _assert_same_numbers(dense, expected, tol=1e-6)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_proposer", "known proposers: "),
        ("fixed_grid:bogus=1", "unknown key 'bogus'"),
        ("fixed_grid:sizes=[16,32", "unbalanced brackets"),
        ('fixed_grid:step="8', "cannot parse the value of 'step'"),
        ("fixed_grid:step", "is not KEY=VALUE"),
        ("rpn", "reads image features"),
        ("rpn:weights=/no/such/model.pt", "does not exist"),
        ("fixed_grid:weights=CKPT", "holds a 'rpn' proposer"),
        ("rpn:weights=CKPT,bogus_key=1", "bogus_key"),
        ("dense", "write dense:weights=best.pt"),
        ("dense:weights=CKPT", "has no dense head"),
    ],
)
def test_bad_proposer_specs_exit_2_naming_the_spec(spec, message, shapes, grid_plugin, rpn_checkpoint, tmp_path,
                                                    capsys):
    spec = spec.replace("CKPT", str(rpn_checkpoint[0]))
    argv = ["-q", "proposals", "--data", str(shapes), "--proposer", "fixed_grid", "--proposer", spec,
            "--out", str(tmp_path), "-p", "proposals_grid_plugin", *NO_WIP]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "--proposer" in err and spec in err and message in err
    assert not (tmp_path / "proposals.json").exists()  # specs are checked before any image is scored


def test_json_has_no_nan(shapes, grid_plugin, tmp_path):
    """No small or large objects in 64 px shapes at a 5-proposal budget: null, never NaN, in the json."""
    assert main(["-q", "proposals", "--data", str(shapes), "--proposer", "fixed_grid", "--max-proposals", "5",
                 "--out", str(tmp_path), "-p", "proposals_grid_plugin", *NO_WIP]) == 0
    text = (tmp_path / "proposals.json").read_text()
    assert "NaN" not in text
    result = json.loads(text)["proposers"][0]
    assert result["AR@10"] is None and result["AR_large@1000"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in result["curve"]["AR"])


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["proposals", "--help"])
    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out
