"""detkit compare: runs side by side, from hand-written run folders and from two real short trainings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import pytest
import yaml

from detkit.cli import main
from detkit.evaluation import compare
from detkit.evaluation.coco import METRIC_NAMES
from detkit.evaluation.compare import compare_dict, compare_table, read_run, read_runs
from detkit.importers import CONFIG_DIR
from detkit.viz.plots import plot_training_curves


def coco_numbers(ap: float, **overrides: float) -> dict[str, float]:
    """Twelve COCO numbers: AP-derived values, APl = -1 (no large objects), then ``overrides``."""
    numbers = {name: round(ap * (1 + i / 20), 4) for i, name in enumerate(METRIC_NAMES)}
    numbers["APl"] = numbers["ARl"] = -1.0
    numbers.update(overrides)
    return numbers


def errors(**delta: float) -> dict:
    base = {"classification": 0.02, "localization": 0.05, "both": 0.01, "duplicate": 0.0, "background": 0.03,
            "missed": 0.08}  # fmt: skip
    base.update(delta)
    return {"ap": 0.6, "delta_ap": base, "counts": {k: 3 for k in base}, "false_positive_ap": 0.07,
            "false_negative_ap": 0.09}  # fmt: skip


def write_run(folder: Path, bbox: dict, *, images: int = 8, curve: bool = True, segm: dict | None = None) -> Path:
    """A run folder as ``detkit train`` (``curve=True``) or ``detkit eval`` writes it."""
    folder.mkdir(parents=True)
    metrics: dict[str, Any] = {"bbox": {**bbox, "backend": "faster"}, "precision": "fp32",
               "images": {"evaluated": images, "total": images, "skipped": []}}  # fmt: skip
    if segm is not None:
        metrics["segm"] = {**segm, "backend": "faster"}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if curve:
        records = [{"type": "train", "iter": i, "epoch": 1, "lr": 0.01, "loss": 3.0 / i, "loss_a": 2.0 / i}
                   for i in range(1, 7)]  # fmt: skip
        early = {**metrics, "bbox": {**metrics["bbox"], "AP": metrics["bbox"]["AP"] / 2}}
        records.insert(3, {"type": "eval", "iter": 3, "epoch": 1, "metrics": early})
        records.append({"type": "eval", "iter": 6, "epoch": 1, "metrics": metrics})
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        config = {"data": {"val": {"name": "shapes", "root": "/data/shapes", "split": "val"}}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def table_rows(table: str, num_runs: int) -> dict[str, list[str]]:
    """Label -> cells of a compare table (title and footnote lines left out)."""
    rows = {}
    for line in table.splitlines()[2:]:
        words = line.split()
        if len(words) > num_runs and all(w[0].isdigit() or w.startswith("-") for w in words[-num_runs:]):
            rows[" ".join(words[:-num_runs])] = words[-num_runs:]
    return rows


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    """A training run (classes circle, square) and an evaluation with error analysis (circle, triangle)."""
    trained = write_run(
        tmp_path / "trained", {**coco_numbers(0.4123), "per_class": {"circle": 0.5, "square": -1.0}}
    )
    evaluated = write_run(
        tmp_path / "evaluated",
        {**coco_numbers(0.6, AP50=0.4123 * 1.05), "per_class": {"circle": 0.3, "triangle": 0.7}, "errors": errors()},
        curve=False,
    )
    return [trained, evaluated]


def test_table_shows_values_best_marks_and_missing_classes(runs: list[Path]) -> None:
    table = compare_table(read_runs(runs), "bbox")
    header = table.splitlines()[1].split()
    assert header == ["trained", "evaluated"]
    rows = table_rows(table, 2)
    assert rows["AP"] == ["0.412", "0.600*"]
    assert rows["AP50"] == ["0.433", "0.433"]  # equal at the printed precision: no mark
    assert rows["APl"] == ["-", "-"]  # -1: nothing to measure
    assert rows["images"] == ["8/8", "8/8"] and rows["evaluated at iter"] == ["6", "-"]
    assert rows["circle"] == ["0.500*", "0.300"]
    assert rows["square"] == ["-", "-"] and rows["triangle"] == ["-", "0.700"]  # one value: nothing to rank
    assert list(rows).index("circle") < list(rows).index("square") < list(rows).index("triangle")
    assert rows["classification"] == ["-", "0.020"] and rows["false negatives"] == ["-", "0.090"]
    assert "TIDE dAP" in table and "no error analysis in: trained" in table


def test_lower_dap_is_best_and_error_rows_only_with_errors(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", {**coco_numbers(0.3), "errors": errors(missed=0.2)}, curve=False)
    b = write_run(tmp_path / "b", {**coco_numbers(0.3), "errors": errors(missed=0.1, background=0.1)}, curve=False)
    c = write_run(tmp_path / "c", {**coco_numbers(0.2), "errors": errors()}, curve=False)
    rows = table_rows(compare_table(read_runs([a, b, c]), "bbox"), 3)
    assert rows["missed"] == ["0.200", "0.100", "0.080*"]
    assert rows["background"] == ["0.030*", "0.100", "0.030*"]  # a tie for the best: both marked
    assert rows["AP"] == ["0.300*", "0.300*", "0.200"]
    assert rows["duplicate"] == ["0.000", "0.000", "0.000"]
    plain = [write_run(tmp_path / n, coco_numbers(0.1 * i), curve=False) for i, n in enumerate(("d", "e"), 1)]
    table = compare_table(read_runs(plain), "bbox")
    assert "TIDE" not in table and "classification" not in table
    assert "errors" not in compare_dict(read_runs(plain))["bbox"]


def test_error_types_are_tides_and_negative_fixes_show(tmp_path: Path) -> None:
    assert compare.ERROR_TYPES == ("classification", "localization", "both", "duplicate", "background", "missed")
    a = write_run(tmp_path / "a", {**coco_numbers(0.3), "errors": {**errors(), "false_positive_ap": -0.004}})
    b = write_run(tmp_path / "b", {**coco_numbers(0.3), "errors": errors()})
    assert table_rows(compare_table(read_runs([a, b]), "bbox"), 2)["false positives"] == ["-0.004*", "0.070"]


def test_compare_dict_holds_the_table(runs: list[Path]) -> None:
    data = compare_dict(read_runs(runs))
    assert [r["name"] for r in data["runs"]] == ["trained", "evaluated"]
    assert data["runs"][0]["iterations"] == 6 and data["runs"][1]["iterations"] is None
    assert data["runs"][0]["evaluated_on"]["data"] == "shapes root=/data/shapes split=val"
    assert data["runs"][1]["evaluated_on"]["images"] == {"evaluated": 8, "total": 8, "skipped": 0}
    assert set(data) == {"runs", "bbox", "notes"}  # no segm anywhere
    bbox = data["bbox"]
    assert bbox["metrics"]["AP"] == {"trained": 0.4123, "evaluated": 0.6}
    assert bbox["metrics"]["APl"] == {"trained": None, "evaluated": None}
    assert bbox["per_class"]["square"] == {"trained": None, "evaluated": None}
    assert bbox["errors"]["missed"] == {"trained": None, "evaluated": 0.08}
    assert bbox["best"]["metrics"]["AP"] == ["evaluated"] and bbox["best"]["metrics"]["AP50"] == []
    assert bbox["best"]["per_class"]["circle"] == ["trained"]
    json.dumps(data)  # JSON-ready


def test_segm_columns_and_runs_without_masks(tmp_path: Path) -> None:
    masks = write_run(tmp_path / "masks", coco_numbers(0.5), segm=coco_numbers(0.4), curve=False)
    boxes = write_run(tmp_path / "boxes", coco_numbers(0.6), curve=False)
    runs = read_runs([masks, boxes])
    assert list(compare_dict(runs)) == ["runs", "bbox", "segm", "notes"]
    table = compare_table(runs, "segm")
    assert table.startswith("segm (masks)") and "no segm metrics in: boxes" in table
    assert table_rows(table, 2)["AP"] == ["0.400", "-"]
    with pytest.raises(Exception, match="none of the runs has segm"):
        compare_table(read_runs([boxes]), "segm")


def test_same_folder_names_are_made_unique(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a" / "eval", coco_numbers(0.1), curve=False)
    b = write_run(tmp_path / "b" / "eval", coco_numbers(0.2), curve=False)
    assert [r.name for r in read_runs([a, b, a])] == ["a/eval", "b/eval", "a/eval#2"]


def test_different_image_counts_are_flagged(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", coco_numbers(0.1), images=8, curve=False)
    b = write_run(tmp_path / "b", coco_numbers(0.2), images=100, curve=False)
    assert any("different numbers of images (a: 8, b: 100)" in n for n in compare_dict(read_runs([a, b]))["notes"])


def test_a_stopped_run_is_read_from_its_last_evaluation(tmp_path: Path) -> None:
    run = write_run(tmp_path / "stopped", coco_numbers(0.25))
    (run / "metrics.json").unlink()
    summary = read_run(run)
    assert summary.metrics["bbox"]["AP"] == 0.25 and summary.evaluated_on["iteration"] == 6


def test_training_curves_png(runs: list[Path], tmp_path: Path) -> None:
    summaries = read_runs(runs)
    assert summaries[1].records is None
    out = plot_training_curves(summaries, tmp_path / "plots" / "curves.png")
    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 400
    assert image.std() > 5  # something was drawn
    empty = plot_training_curves([summaries[1]], tmp_path / "empty.png")  # no run with records still draws
    assert cv2.imread(str(empty)) is not None
    assert not list((tmp_path / "plots").glob(".*"))  # no temporary file left


def test_cli_prints_the_table_and_writes_json_and_png(runs: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert table_rows(printed, 2)["AP"] == ["0.412", "0.600*"]
    assert "no training curve for evaluated" in printed
    assert json.loads((out / "compare.json").read_text()) == compare_dict(read_runs(runs))
    assert cv2.imread(str(out / "training_curves.png")) is not None

    assert main(["compare", str(runs[0])]) == 0  # one run: its table, no marks
    printed = capsys.readouterr().out
    assert "*" not in printed.split("\n", 1)[1] and table_rows(printed, 1)["AP"] == ["0.412"]
    assert not (runs[0] / "compare.json").exists()  # no --out: nothing written


def test_cli_errors_are_one_line_with_status_2(runs: list[Path], tmp_path: Path, capsys) -> None:
    def error(*argv: str) -> str:
        assert main(["compare", *argv]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1, err
        return err

    assert "'" + str(tmp_path / "nope") + "' does not exist" in error(str(runs[0]), str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    err = error(str(runs[0]), str(empty))
    assert f"'{empty}' has no metrics.json" in err and f"detkit eval --weights CHECKPOINT --out {empty}" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text('{"bbox": {"AP": 0.1,')
    assert f"'{broken / 'metrics.json'}' is not valid JSON" in error(str(broken))
    (broken / "metrics.json").write_text('{"loss": 1.0}')
    assert "holds no 'bbox' or 'segm' metrics" in error(str(broken))
    assert "none of the runs has segm metrics" in error(str(runs[0]), "--iou-type", "segm")
    (tmp_path / "file").write_text("")
    assert "is a file" in error(str(runs[0]), "--out", str(tmp_path / "file"))


def test_help_has_examples(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--help"])
    assert exit_info.value.code == 0 and "examples:" in capsys.readouterr().out


def test_two_short_trainings_compared_end_to_end(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    common = [
        f"data.train.root={data}", f"data.val.root={data}", "data.train.num_train=8", "data.train.num_val=4",
        "data.val.num_train=8", "data.val.num_val=4", "train.max_iters=2", "train.batch_size=4",
        "train.warmup_iters=1", "train.log_period=1", "data.check=off",
    ]  # fmt: skip
    outs = []
    for name, lr in (("lr_high", "0.02"), ("lr_low", "0.002")):
        out = tmp_path / name
        argv = ["-q", "train", str(CONFIG_DIR / "shapes_faster_rcnn.yaml"), *common, f"train.lr={lr}"]
        assert main([*argv, f"output.dir={out}", "--device", "cpu"]) == 0
        outs.append(out)
    capsys.readouterr()
    assert main(["compare", *map(str, outs), "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    rows = table_rows(printed, 2)
    for i, out in enumerate(outs):
        metrics = json.loads((out / "metrics.json").read_text())["bbox"]
        for key in ("AP", "AP50", "AR100"):
            assert rows[key][i].rstrip("*") == (f"{metrics[key]:.3f}" if metrics[key] >= 0 else "-")
        for name, ap in metrics["per_class"].items():
            assert rows[name][i].rstrip("*") == (f"{ap:.3f}" if ap >= 0 else "-")
    assert rows["images"] == ["4/4", "4/4"] and rows["evaluated at iter"] == ["2", "2"]
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["iterations"] for r in saved["runs"]] == [2, 2]
    assert cv2.imread(str(tmp_path / "cmp" / "training_curves.png")) is not None
