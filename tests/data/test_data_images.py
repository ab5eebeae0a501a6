"""read_image / image_to_tensor / find_images, checked against Pillow and hand values."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detkit.data.images import IMAGE_EXTENSIONS, find_images, image_to_tensor, read_image
from detkit.errors import DataError


def _rgb(h: int = 5, w: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_channel_order(tmp_path: Path) -> None:
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")  # Pillow writes RGB
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = _rgb()[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (5, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_is_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, :, :3] = (10, 100, 200)
    rgba[0, :, 3] = (255, 0, 51)  # opaque, transparent, 20 % opaque
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    expected = np.array(
        [
            [10, 100, 200],
            [255, 255, 255],
            # v * 0.2 + 255 * 0.8, rounded
            [round(10 * 0.2 + 204), round(100 * 0.2 + 204), round(200 * 0.2 + 204)],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(out[0], expected)


def test_palette_png_matches_pillow(tmp_path: Path) -> None:
    rgb = _rgb(6, 6, seed=1)
    Image.fromarray(rgb).quantize(colors=8).save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P"
        reference = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), reference)


def test_16bit_scaled_to_8bit(tmp_path: Path) -> None:
    values = np.array([[0, 256, 257, 385, 386, 65535]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), values)
    out = read_image(tmp_path / "d.png")
    expected = np.rint(values.astype(np.float64) / 257).astype(np.uint8)  # 0, 1, 1, 1, 2, 255
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out[:, :, 2], expected)


def test_16bit_color_channel_order(tmp_path: Path) -> None:
    bgr = np.zeros((1, 1, 3), dtype=np.uint16)
    bgr[0, 0] = (257 * 3, 257 * 2, 257 * 1)  # OpenCV writes BGR
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png")[0, 0], [1, 2, 3])


def test_one_pixel_image(tmp_path: Path) -> None:
    Image.fromarray(np.array([[[1, 2, 3]]], dtype=np.uint8)).save(tmp_path / "one.png")
    np.testing.assert_array_equal(read_image(tmp_path / "one.png"), [[[1, 2, 3]]])


def test_unicode_path(tmp_path: Path) -> None:
    folder = tmp_path / "données"
    folder.mkdir()
    rgb = _rgb()
    Image.fromarray(rgb).save(folder / "画像.png")
    np.testing.assert_array_equal(read_image(folder / "画像.png"), rgb)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"this is a text file, not a picture\n", "not an image or corrupt"),
        (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "not an image or corrupt"),
    ],
)
def test_unusable_files_raise_data_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match=reason) as info:
        read_image(path)
    assert "bad.jpg" in str(info.value)


def test_truncated_png_raises_data_error(tmp_path: Path) -> None:
    ok, buf = cv2.imencode(".png", _rgb(32, 32))
    assert ok
    (tmp_path / "cut.png").write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(DataError, match=r"cut.png"):
        read_image(tmp_path / "cut.png")


def test_missing_file_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope.png.*does not exist"):
        read_image(tmp_path / "nope.png")


def test_image_to_tensor() -> None:
    rgb = _rgb()
    t = image_to_tensor(rgb)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    # element (c, y, x) is rgb[y, x, c] / 255
    torch.testing.assert_close(t[1, 2, 3], torch.tensor(rgb[2, 3, 1] / 255.0, dtype=torch.float32))
    torch.testing.assert_close(t.permute(1, 2, 0) * 255, torch.from_numpy(rgb).float())
    assert t.min() >= 0 and t.max() <= 1
    with pytest.raises(ValueError):
        image_to_tensor(rgb[:, :, 0])
    with pytest.raises(ValueError):
        image_to_tensor(rgb.astype(np.float32))


def _touch_images(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in names:
        (folder / n).write_bytes(b"x")
        paths.append(folder / n)
    return paths


def test_find_images_folder_sorted_filtered_not_recursive(tmp_path: Path) -> None:
    _touch_images(tmp_path, ["b.png", "a.JPG", "c.txt", "d.jpeg"])
    _touch_images(tmp_path / "sub", ["e.png"])
    assert find_images([str(tmp_path)]) == [
        tmp_path / "a.JPG",
        tmp_path / "b.png",
        tmp_path / "d.jpeg",
    ]
    assert ".jpg" in IMAGE_EXTENSIONS and ".png" in IMAGE_EXTENSIONS


def test_find_images_files_globs_and_duplicates(tmp_path: Path) -> None:
    a, b, _ = _touch_images(tmp_path, ["a.png", "b.png", "notes.txt"])
    _touch_images(tmp_path / "sub", ["c.png"])
    found = find_images([str(b), str(tmp_path / "*.png"), str(tmp_path / "**" / "*.png")])
    assert found == [b, a, tmp_path / "sub" / "c.png"]


@pytest.mark.parametrize("kind", ["missing", "empty_folder", "glob"])
def test_find_images_nothing_matched(tmp_path: Path, kind: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.txt").write_text("x")
    item = {
        "missing": str(tmp_path / "missing.png"),
        "empty_folder": str(tmp_path / "empty"),
        "glob": str(tmp_path / "*.jpg"),
    }[kind]
    with pytest.raises(DataError) as info:
        find_images([item])
    assert item in str(info.value)


@pytest.mark.parametrize("ext", [".bmp", ".png", ".tif", ".ppm"])
def test_corrupt_file_is_reported_without_opencv_log_lines(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                           ext: str) -> None:
    ok, buf = cv2.imencode(ext, _rgb(64, 64))
    assert ok
    path = tmp_path / f"cut{ext}"
    path.write_bytes(buf.tobytes()[:20])  # OpenCV's decoders log these as [ERROR:0@...] / [ WARN:0@...]
    with pytest.raises(DataError, match=rf"cut\{ext}"):
        read_image(path)
    captured = capfd.readouterr()  # OpenCV writes to the process's stderr, below Python
    assert "ERROR" not in captured.err and "WARN" not in captured.err, captured.err
    assert cv2.utils.logging.getLogLevel() != cv2.utils.logging.LOG_LEVEL_SILENT  # restored afterwards
