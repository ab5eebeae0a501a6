"""detkit benchmark: the agreement checks it relies on, and the command end to end (speed is never asserted)."""

from __future__ import annotations

import json
import mmap

import numpy as np
import pytest
import torch

from detkit.cli import main
from detkit.engine import benchmark
from detkit.engine.benchmark import BOX_TOLERANCE, Setup, Subject, compare_detections, compare_losses
from detkit.structures import Detections


def _detections(boxes: list[list[float]], labels: list[int], scores: list[float]) -> Detections:
    return Detections(boxes=torch.tensor(boxes), labels=torch.tensor(labels), scores=torch.tensor(scores))


def _torchvision(boxes: list[list[float]], labels: list[int], scores: list[float]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels), "scores": torch.tensor(scores)}


BOXES = [[10.0, 10.0, 50.0, 60.0], [5.0, 5.0, 20.0, 20.0]]


def test_detections_agree_within_the_tolerances_and_labels_shift_by_one():
    tv = _torchvision(BOXES, [1, 18], [0.9, 0.5])
    near = [[x + BOX_TOLERANCE / 2 for x in box] for box in BOXES]
    report = compare_detections([tv], [_detections(near, [0, 17], [0.9, 0.5 + 5e-5])])
    assert report["identical"]
    assert report["counts"] == [[2, 2]]
    assert report["max_box_diff"] == pytest.approx(BOX_TOLERANCE / 2, abs=1e-5)


def test_detections_whose_scores_tie_within_rounding_may_come_in_either_order():
    tv = _torchvision(BOXES, [1, 18], [0.5, 0.5])
    report = compare_detections([tv], [_detections(BOXES[::-1], [17, 0], [0.5 + 1e-6, 0.5])])
    assert report["identical"] and report["unmatched"] == 0 and report["max_box_diff"] == 0
    swapped_labels = compare_detections([tv], [_detections(BOXES, [17, 0], [0.5, 0.5])])
    assert not swapped_labels["identical"] and swapped_labels["unmatched"] == 2


@pytest.mark.parametrize(
    ("boxes", "labels", "scores", "why"),
    [
        ([[10.02, 10.0, 50.0, 60.0], BOXES[1]], [0, 17], [0.9, 0.5], "a box 0.02 px off"),
        (BOXES, [0, 16], [0.9, 0.5], "another label"),
        (BOXES, [0, 17], [0.9, 0.501], "a score 1e-3 off"),
        (BOXES[:1], [0], [0.9], "one detection fewer"),
    ],
)
def test_detections_differ(boxes, labels, scores, why):
    report = compare_detections([_torchvision(BOXES, [1, 18], [0.9, 0.5])], [_detections(boxes, labels, scores)])
    assert not report["identical"], why


def test_losses_compare_by_value_whatever_their_names():
    tv = {"loss_classifier": torch.tensor(2.0), "loss_box_reg": torch.tensor(0.5)}
    assert compare_losses(tv, {"loss_roi_box": torch.tensor(0.5), "loss_roi_cls": torch.tensor(2.0)})["losses_equal"]
    assert not compare_losses(tv, {"a": torch.tensor(0.5), "b": torch.tensor(2.01)})["losses_equal"]
    assert not compare_losses(tv, {"a": torch.tensor(2.5)})["losses_equal"]


def _fresh_memory_subject(name: str, faulting_calls: int) -> Subject:
    """A subject whose first ``faulting_calls`` steps touch 64 MB of freshly mapped memory, as a growing heap does."""
    calls = []

    def step() -> None:
        calls.append(1)
        if len(calls) <= faulting_calls:
            with mmap.mmap(-1, 64 * 2**20) as fresh:
                np.frombuffer(fresh, dtype=np.uint8)[::4096] = 1  # one write per page: ~16,000 page faults
    return Subject(name, step)


@pytest.mark.skipif(benchmark.resource is None, reason="no page-fault counts on this platform")
@pytest.mark.parametrize(("asked", "faulting", "expected"), [
    (2, 0, 2),  # settled: the rounds asked for
    (2, 4, 5),  # steps 1-4 fault: round 5 is the first without, and timing starts after it
    (2, 99, 2 + benchmark.MAX_SETTLING_ROUNDS),  # never settles: a bounded number of extra rounds
    (0, 99, 0),  # no warm-up asked for: none
])
def test_warm_up_goes_on_while_a_step_faults_fresh_memory_in(asked, faulting, expected):
    subjects = [_fresh_memory_subject("steady", 0), _fresh_memory_subject("growing", faulting)]
    setup = Setup("any", runs=2, warmup=asked)
    assert benchmark._time(subjects, setup, show_progress=False) == expected
    assert [len(s.times) for s in subjects] == [2, 2]


@pytest.mark.parametrize("winograd", [False, True])
def test_benchmark_against_torchvision_ssd_checks_detections_and_writes_the_speedup(winograd, tmp_path, capsys):
    """With ``--winograd`` VGG16's 256- and 512-channel 3x3 convs run as Winograd: still torchvision's detections."""
    out = tmp_path / "bench.json"
    args = ["benchmark", "ssd300_vgg16", "--against", "torchvision", "--runs", "1", "--warmup", "0"]
    assert main([*args, "--out", str(out), *(["--winograd"] if winograd else [])]) == 0
    printed = capsys.readouterr().out
    assert "detections (fp32, torchvision vs detkit): identical" in printed
    assert ("batch 1, winograd" in printed) == winograd
    assert "speed-up (torchvision / detkit):" in printed
    report = json.loads(out.read_text())
    assert report["identical"] and report["mode"] == "inference" and report["batch_size"] == 1
    assert report["winograd"] == winograd
    names = ["torchvision ssd300_vgg16", "detkit ssd300_vgg16"]
    assert list(report["results"]) == names
    tv, ours = (report["results"][n] for n in names)
    assert report["speedup"] == pytest.approx(tv["ms_per_batch"] / ours["ms_per_batch"])
    assert ours["images_per_s"] == pytest.approx(1000 / ours["ms_per_image"])


@pytest.mark.parametrize("winograd", [False, True])
def test_training_mode_gives_torchvisions_losses_at_step_0(winograd, tmp_path, capsys):
    """The two-stage sampler draws and the frozen layers line up with torchvision's, so the losses agree.

    With ``--winograd`` as well: the FPN, RPN and layer3/layer4 3x3 convs then train as Winograd.
    """
    out = tmp_path / "train.json"
    args = ["benchmark", "fasterrcnn_resnet50_fpn", "--against", "torchvision", "--train", "--batch-size", "1"]
    args += ["--winograd"] if winograd else []
    assert main([*args, "--runs", "1", "--warmup", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "train" and report["losses_equal"]
    assert set(report["detkit_losses"]) == {"loss_rpn_objectness", "loss_rpn_box", "loss_roi_cls", "loss_roi_box"}
    assert sorted(report["detkit_losses"].values()) == pytest.approx(
        sorted(report["torchvision_losses"].values()), rel=1e-4
    )
    assert "losses at step 0: equal" in capsys.readouterr().out


def test_a_config_is_timed_alone_with_random_weights_and_batches(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["benchmark", "detkit:shapes_faster_rcnn.yaml", "--batch-size", "2", "--runs", "1", "--warmup", "0"]
    assert main([*args, "--num-classes", "4", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["speedup"] is None and "identical" not in report
    assert list(report["results"]) == ["detkit detkit:shapes_faster_rcnn.yaml"]
    assert report["batch_size"] == 2 and len(report["images"]) == 2


def test_a_config_with_few_classes_trains_on_labels_it_has(tmp_path):
    """The training batch's labels (0, 2, 17 for torchvision's 91 classes) wrap to the model's classes."""
    out = tmp_path / "train.json"
    args = ["benchmark", "detkit:shapes_faster_rcnn.yaml", "--train", "--num-classes", "3", "--runs", "1"]
    assert main([*args, "--warmup", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "train"
    assert list(report["results"]) == ["detkit detkit:shapes_faster_rcnn.yaml"]


def test_against_torchvision_needs_a_torchvision_model(capsys):
    assert main(["benchmark", "detkit:shapes_faster_rcnn.yaml", "--against", "torchvision"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--against torchvision needs a torchvision model name" in err
    assert "fasterrcnn_resnet50_fpn" in err


def test_an_unknown_model_name_lists_the_torchvision_models(capsys):
    assert main(["benchmark", "fasterrcnn_resnet50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'fasterrcnn_resnet50' is neither a config file" in err
    assert "did you mean 'fasterrcnn_resnet50_fpn'" in err and "ssd300_vgg16" in err


@pytest.mark.parametrize("flag", ["--runs", "--batch-size"])
def test_counts_below_one_are_refused(flag, capsys):
    assert main(["benchmark", "ssd300_vgg16", flag, "0"]) == 2
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err


def _shapes_detector():
    from detkit.config import load_config
    from detkit.data.shapes import render_shapes_image
    from detkit.detectors import build_detector
    from detkit.importers import CONFIG_DIR
    from detkit.plugins import load_plugins

    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / "shapes_faster_rcnn.yaml", ["model.postprocess.score_thresh=0.0"])
    model = build_detector(config, load_plugins().registry, num_classes=4).eval()
    pixels, _ = render_shapes_image(np.random.default_rng(3), 128)
    image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    return model, image


def _same(a: Detections, b: Detections, atol: float) -> bool:
    return len(a) == len(b) and torch.equal(a.labels, b.labels) and torch.allclose(a.boxes, b.boxes, atol=atol)


def test_channels_last_and_compiled_trunks_give_the_same_detections_and_keep_parameter_names():
    model, image = _shapes_detector()
    keys = list(model.state_dict())
    with torch.no_grad():
        eager = model([image])[0][0]
        assert len(eager) > 10
        model.use_channels_last()
        assert _same(eager, model([image])[0][0], atol=1e-3)
        model.compile_trunk()
        compiled = model([image])[0][0]
    assert _same(eager, compiled, atol=1e-3)
    assert list(model.state_dict()) == keys
