"""draw_detections and save_image: pixels change where they should and nowhere else."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from detkit.errors import DataError
from detkit.structures import Detections
from detkit.viz import draw_detections, save_image
from detkit.viz.draw import PALETTE, class_color

NAMES = ["cat", "dog"]


def dets(boxes, scores=None, labels=None, masks=None) -> Detections:
    boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = boxes_t.shape[0]
    return Detections(
        boxes=boxes_t,
        scores=torch.tensor(scores if scores is not None else [0.9] * n),
        labels=torch.tensor(labels if labels is not None else [1] * n, dtype=torch.int64),
        masks=masks,
    )


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels that differ."""
    return (a != b).any(axis=2)


def test_box_pixels_change_inside_the_box_and_not_far_outside():
    image = np.zeros((100, 120, 3), np.uint8)
    out = draw_detections(image, dets([[30, 40, 70, 80]]), class_names=NAMES)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not image.any()  # the input is left alone
    diff = changed(image, out)
    assert tuple(out[60, 30]) == class_color(1)  # left edge, away from the label
    assert tuple(out[79, 50]) == class_color(1)  # bottom edge
    assert not diff[45:75, 35:65].any()  # the inside stays clear (no mask)
    assert not diff[83:].any()  # below the box
    assert not diff[:, :27].any()  # left of the box
    ys, xs = np.nonzero(diff[:40])  # above the box: only the label, sitting on the box corner
    assert ys.size > 0 and ys.max() >= 35 and xs.min() >= 29


def test_zero_detections_and_score_threshold_leave_the_image_unchanged():
    image = np.full((20, 30, 3), 7, np.uint8)
    out = draw_detections(image, Detections(), class_names=NAMES)
    assert np.array_equal(out, image) and out is not image
    out = draw_detections(
        image, dets([[2, 2, 20, 15]], scores=[0.3]), class_names=NAMES, score_thresh=0.5
    )
    assert np.array_equal(out, image)


def test_label_is_kept_inside_the_image():
    image = np.zeros((100, 100, 3), np.uint8)
    # A box in the top-right corner: no room above it nor to its right.
    out = draw_detections(image, dets([[85, 0, 100, 30]], labels=[0]), class_names=["a long name"])
    diff = changed(image, out)
    assert diff[:, :85].any()  # the label was shifted left into the image
    label_rows = np.nonzero(diff[:, 50])[0]
    assert label_rows.size and label_rows.min() == 0  # and starts at the top row


def test_masks_are_translucent_overlays():
    image = np.full((60, 60, 3), 100, np.uint8)
    probs = torch.full((1, 60, 60), 0.1)
    probs[0, 20:40, 20:40] = 0.9
    out = draw_detections(
        image, dets([[10, 10, 50, 50]], labels=[0], masks=probs), class_names=NAMES
    )
    center = out[30, 30].astype(int)
    color = np.array(class_color(0))
    # blended: strictly between the image and the class colour, on the colour's side
    assert not np.array_equal(center, image[30, 30])
    assert np.all(np.abs(center - color) <= np.abs(image[30, 30].astype(int) - color))
    assert np.array_equal(out[45, 45], image[45, 45])  # in the box, outside the mask
    bool_out = draw_detections(
        image, dets([[10, 10, 50, 50]], labels=[0], masks=probs >= 0.5), class_names=NAMES
    )
    assert np.array_equal(bool_out, out)


def test_low_resolution_masks_are_resized():
    image = np.zeros((64, 64, 3), np.uint8)
    small = torch.zeros((1, 16, 16))
    small[0, 4:12, 4:12] = 1.0  # image pixels 16..47
    out = draw_detections(image, dets([[0, 0, 64, 64]], masks=small), class_names=NAMES)
    assert changed(image, out)[32, 32]
    assert not changed(image, out)[56, 32]


def test_tiny_huge_and_degenerate_inputs():
    one = np.zeros((1, 1, 3), np.uint8)
    assert draw_detections(one, dets([[0, 0, 1, 1]]), class_names=NAMES).shape == (1, 1, 3)
    huge = np.zeros((3000, 4000, 3), np.uint8)
    out = draw_detections(huge, dets([[1000, 1000, 3000, 2000]], labels=[0]), class_names=NAMES)
    assert tuple(out[1500, 1000]) == PALETTE[0]
    assert not changed(huge, out)[2100:].any()
    image = np.zeros((20, 20, 3), np.uint8)
    weird = dets([[50, 50, 60, 60], [float("nan"), 0, 5, 5], [-10, -10, -2, -2]], labels=[7, 0, 1])
    assert np.array_equal(draw_detections(image, weird, class_names=NAMES), image)


def test_unknown_labels_get_a_generic_name_and_bad_images_are_refused():
    image = np.zeros((40, 40, 3), np.uint8)
    out = draw_detections(image, dets([[5, 5, 30, 30]], labels=[25]), class_names=NAMES)
    assert tuple(out[20, 5]) == class_color(25)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        draw_detections(image.astype(np.float32), dets([[5, 5, 30, 30]]), class_names=NAMES)


def test_save_image_png_round_trip_and_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    path = save_image(tmp_path / "out" / "a.png", image)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, image)
    smooth = np.zeros((32, 32, 3), np.uint8)
    smooth[..., 0] = 200  # pure red in RGB
    jpg = cv2.imread(str(save_image(tmp_path / "b.JPG", smooth)))
    assert jpg.shape == smooth.shape and abs(int(jpg[16, 16, 2]) - 200) < 8  # red is BGR's last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.JPG", "out"]


def test_save_image_rejects_unknown_extensions(tmp_path):
    with pytest.raises(DataError, match=r"\.png, \.jpg"):
        save_image(tmp_path / "a.gif", np.zeros((2, 2, 3), np.uint8))


def _label_rows(image: np.ndarray, out: np.ndarray, box_top: int) -> int:
    """Height in pixels of what was drawn above a box whose top edge is at row ``box_top``."""
    rows = np.nonzero(changed(image, out)[:box_top].any(axis=1))[0]
    return int(box_top - rows.min()) if rows.size else 0


def test_small_images_are_drawn_enlarged_so_labels_do_not_cover_objects():
    image = np.full((128, 128, 3), 90, np.uint8)
    box = [[40, 60, 72, 92]]  # a 32 px object, as on the 128 px shapes images
    plain = draw_detections(image, dets(box), class_names=NAMES)
    label_plain = _label_rows(image, plain, 60)
    assert label_plain >= 10  # a label 10+ px high covers a third of the object above it

    out = draw_detections(image, dets(box), class_names=NAMES, min_size=384)
    assert out.shape == (384, 384, 3)  # three times larger, by pixel repetition
    big = cv2.resize(image, (384, 384), interpolation=cv2.INTER_NEAREST)
    assert tuple(out[3 * 76, 3 * 40]) == class_color(1)  # the box, scaled with the image
    label_big = _label_rows(big, out, 3 * 60)
    assert 0 < label_big / 3 <= 0.5 * label_plain  # the label is half as tall, measured in image pixels
    assert not changed(big, out)[3 * 60 + 4 : 3 * 92 - 4, 3 * 40 + 4 : 3 * 72 - 4].any()  # the object stays clear


def test_min_size_leaves_large_images_and_empty_drawings_alone():
    image = np.full((400, 500, 3), 5, np.uint8)
    assert draw_detections(image, dets([[10, 10, 50, 50]]), class_names=NAMES, min_size=384).shape == image.shape
    small = np.full((100, 300, 3), 5, np.uint8)
    out = draw_detections(small, Detections(), class_names=NAMES, min_size=384)
    assert out.shape == (400, 1200, 3) and (out == 5).all()  # empty, but the same size as drawn ones
