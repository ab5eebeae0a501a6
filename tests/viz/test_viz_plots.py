"""plot_loss_curve draws real pictures from metrics.jsonl, with or without evaluations."""

from __future__ import annotations

import json

import cv2
import pytest

from detkit.errors import DataError
from detkit.viz import plot_loss_curve


def write_records(path, *, evals: bool, garbage: bool = False) -> None:
    lines = []
    for i in range(1, 21):
        loss_a, loss_b = 5.0 / i, 0.1 + 0.2 / i
        lines.append(
            {
                "type": "train",
                "iter": 10 * i,
                "epoch": 1 + i // 10,
                "lr": 0.01 * min(1, i / 5),
                "loss": loss_a + loss_b,
                "loss_rpn": loss_a,
                "loss_box": loss_b,
                "seconds": i,
            }
        )
        if evals and i % 10 == 0:
            lines.append(
                {
                    "type": "eval",
                    "iter": 10 * i,
                    "epoch": i // 10,
                    "metrics": {"bbox": {"AP": 0.1 * i / 10}},
                    "seconds": i,
                }
            )
    text = "".join(json.dumps(r) + "\n" for r in lines)
    if garbage:
        text += '{"type": "train", "iter": 21'  # a line cut off by a crash
    path.write_text(text)


def read_png(path):
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable PNG"
    return image


def test_curve_with_evaluations_is_a_two_panel_picture(tmp_path):
    src = tmp_path / "metrics.jsonl"
    write_records(src, evals=True, garbage=True)
    out = plot_loss_curve(src, tmp_path / "plots" / "loss_curve.png")
    with_eval = read_png(out)
    assert with_eval.std() > 10  # not blank

    write_records(src, evals=False)
    without_eval = read_png(plot_loss_curve(src, tmp_path / "plots" / "loss_curve.png"))
    assert without_eval.std() > 10
    assert with_eval.shape[0] > without_eval.shape[0]  # the AP panel adds height
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["loss_curve.png"]


def test_empty_file_still_gives_a_picture(tmp_path):
    src = tmp_path / "metrics.jsonl"
    src.write_text("")
    assert read_png(plot_loss_curve(src, tmp_path / "a.png")).std() > 0


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"metrics\.jsonl"):
        plot_loss_curve(tmp_path / "metrics.jsonl", tmp_path / "a.png")
