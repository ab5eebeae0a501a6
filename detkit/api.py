"""detkit from Python: load a checkpoint once, detect on anything that holds an image.

    from detkit import Detector

    det = Detector.from_checkpoint("runs/demo/best.pt", device="auto")
    result = det("photo.jpg")                       # one image in, one DetectionResult out
    for r in det(["a.jpg", frame_bgr, pil_image]):  # a list in, a list out, run in batches
        print(r.to_records())
        annotated = r.draw()                        # (H, W, 3) uint8 RGB

Inputs, alone or in a list, mixed freely:

- a path (``str`` or :class:`~pathlib.Path`): read as :func:`detkit.data.images.read_image`
  reads it (grayscale, alpha and 16-bit images converted);
- a numpy array ``(H, W, 3)`` or ``(H, W)``, uint8 (or float in ``[0, 1]``); its channels
  are BGR by default, as OpenCV gives them (``color="rgb"`` for RGB arrays);
- a PIL image (any mode, converted to RGB);
- a torch tensor ``(3, H, W)``, RGB, float in ``[0, 1]`` (torchvision's convention) or uint8.

8-bit pixels reach the model as ``pixels / 255``, as in ``detkit detect``; float pixels as
they are.

Images are run ``batch_size`` at a time on the detector's device under its precision
(``fp32``, ``fp16``, ``bf16``; see :func:`detkit.device.autocast`), exactly as ``detkit
detect`` runs them, so both give the same detections for the same pixels.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor, nn

from detkit.errors import ConfigError, DataError
from detkit.structures import Detections

__all__ = ["DetectionResult", "Detector", "ImageInput"]

#: What :meth:`Detector.__call__` takes for one image.
ImageInput = str | os.PathLike[str] | np.ndarray | Tensor | Any  # Any: a PIL image

_COLORS = ("bgr", "rgb")
_PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass
class DetectionResult:
    """The detections of one image, with what is needed to name and draw them.

    Attributes:
        detections: boxes ``(D, 4)`` xyxy in the image's pixels, scores ``(D,)``, labels
            ``(D,)`` and, for mask models, masks ``(D, H, W)`` probabilities; on the CPU,
            best score first.
        class_names: the name of each label index.
        image: the ``(H, W, 3)`` uint8 RGB pixels the detector saw.
        source: the path the image came from, or ``"<array 3>"`` for the fourth input
            given as an array (or tensor, or PIL image).
    """

    detections: Detections
    class_names: tuple[str, ...]
    image: np.ndarray = field(repr=False)
    source: str

    def __len__(self) -> int:
        return len(self.detections)

    @property
    def boxes(self) -> Tensor:
        """``(D, 4)`` xyxy boxes in the image's pixels."""
        return self.detections.boxes

    @property
    def scores(self) -> Tensor:
        """``(D,)`` scores in ``[0, 1]``."""
        return self.detections.scores

    @property
    def labels(self) -> Tensor:
        """``(D,)`` label indices into :attr:`class_names`."""
        return self.detections.labels

    @property
    def names(self) -> list[str]:
        """The class name of each detection."""
        return [self.class_names[i] for i in self.detections.labels.tolist()]

    def to_records(self) -> list[dict[str, Any]]:
        """``detect``'s ``detections.json`` records: ``file_name``, ``category``, ``bbox`` xywh, ``score`` (+ RLE)."""
        from detkit.engine.predict import detections_to_records

        return detections_to_records(self.detections, file_name=self.source, class_names=self.class_names)

    def draw(self, *, score_thresh: float = 0.0, min_size: int | None = None) -> np.ndarray:
        """The image with boxes, labels and masks drawn (a new ``(H, W, 3)`` uint8 RGB array; see
        :func:`detkit.viz.draw.draw_detections`)."""
        from detkit.viz.draw import draw_detections

        return draw_detections(
            self.image, self.detections, class_names=self.class_names, score_thresh=score_thresh, min_size=min_size
        )

    def save(self, path: str | os.PathLike[str], *, score_thresh: float = 0.0) -> Path:
        """Write :meth:`draw`'s picture to a PNG or JPEG file (atomically)."""
        from detkit.viz.draw import save_image

        return save_image(path, self.draw(score_thresh=score_thresh))


class Detector:
    """A trained detkit model ready to detect; build it with :meth:`from_checkpoint`.

    Attributes:
        model: the detector (an :class:`torch.nn.Module`, in eval mode, on :attr:`device`).
        class_names: the name of each label index.
        config: the resolved config the model was built from.
        device: where it runs.
        precision: ``fp32``, ``fp16`` or ``bf16``.
        score_thresh: detections scoring below it are dropped.
        batch_size: images per model call.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        class_names: Sequence[str],
        config: dict[str, Any] | None = None,
        precision: str = "fp32",
        score_thresh: float = 0.5,
        batch_size: int | None = None,
    ) -> None:
        if precision not in _PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}")
        if not 0.0 <= score_thresh <= 1.0:
            raise ConfigError(f"score_thresh must be in [0, 1], got {score_thresh}")
        from detkit.engine.predict import default_batch_size

        self.model = model.eval()
        self.class_names = tuple(str(n) for n in class_names)
        self.config = config or {}
        self.device = next(model.parameters()).device
        self.precision = precision
        self.score_thresh = float(score_thresh)
        self.batch_size = default_batch_size(self.device) if batch_size is None else int(batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str = "auto",
        precision: str = "fp32",
        score_thresh: float = 0.5,
        batch_size: int | None = None,
        channels_last: bool = False,
        winograd: bool = False,
        compile: bool = False,
        plugins: Sequence[str] = (),
    ) -> Detector:
        """Load a checkpoint ``detkit train`` (or ``import-torchvision``) wrote.

        Args:
            device: ``auto`` (CUDA when there is one), ``cpu``, ``cuda``, ``cuda:N``.
            precision: ``fp32``; ``fp16``/``bf16`` run under autocast.
            score_thresh: the least score of a kept detection (``detkit detect``'s default).
            batch_size: images per model call (default: 1 on a CPU, 8 on CUDA).
            channels_last, winograd, compile: the opt-in speed-ups of ``detkit detect``.
            plugins: plugin modules to load besides the installed ones.

        Raises:
            CheckpointError: the file is not a detkit checkpoint (the message says why).
            ConfigError: an unknown device or precision.
        """
        from detkit.device import resolve_device
        from detkit.engine.build import load_model

        target = resolve_device(device, source="device")
        loaded, _ = load_model(
            path, cli_plugins=plugins, channels_last=channels_last, winograd=winograd, compile=compile
        )
        return cls(
            loaded.model.to(target), class_names=loaded.class_names, config=loaded.config, precision=precision,
            score_thresh=score_thresh, batch_size=batch_size,
        )  # fmt: skip

    @overload
    def __call__(self, images: list[Any] | tuple[Any, ...], *, color: str = "bgr") -> list[DetectionResult]: ...

    @overload
    def __call__(self, images: Any, *, color: str = "bgr") -> DetectionResult: ...

    def __call__(self, images: Any, *, color: str = "bgr") -> DetectionResult | list[DetectionResult]:
        """Detect objects in one image (a :class:`DetectionResult`) or a list of them (a list, in order).

        Args:
            images: see the module docstring for what an image may be.
            color: the channel order of numpy arrays, ``"bgr"`` (OpenCV's) or ``"rgb"``.

        Raises:
            DataError: an input that is no image (the message names which and why).
        """
        if color not in _COLORS:
            raise ConfigError(f"color must be 'bgr' or 'rgb', got {color!r}")
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        results = list(self.stream(items, color=color))
        return results[0] if single else results

    def stream(self, images: Sequence[Any], *, color: str = "bgr") -> Iterator[DetectionResult]:
        """Detect in ``images`` batch by batch, yielding each result as soon as its batch is done."""
        from detkit.device import autocast

        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = [_prepare(image, i, color) for i, image in enumerate(chunk, start)]
            inputs = [pixels.to(self.device).permute(2, 0, 1).float() / scale for pixels, scale, _ in batch]
            with torch.no_grad(), autocast(self.device, self.precision):
                detections, _ = self.model(inputs)
            for (pixels, scale, source), dets in zip(batch, detections):
                dets = dets.to("cpu")
                image = pixels.numpy() if scale == 255.0 else _to_uint8(pixels.numpy())
                yield DetectionResult(dets[dets.scores >= self.score_thresh], self.class_names, image, source)


def _prepare(image: Any, index: int, color: str) -> tuple[Tensor, float, str]:
    """One input as ``(H, W, 3)`` RGB pixels, the value of white in them (255 or 1), and what to call it.

    8-bit inputs stay 8-bit (the model sees ``pixels / 255``, as in ``detkit detect``);
    float inputs in ``[0, 1]`` reach the model as they are.
    """
    if isinstance(image, (str, os.PathLike)):
        from detkit.data.images import read_image

        return torch.from_numpy(read_image(Path(image))), 255.0, str(image)
    name = f"<{type(image).__name__} {index}>"
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise DataError(f"input {index}: a tensor image must be (3, H, W) RGB, got shape {tuple(image.shape)}")
        return _checked(image.detach().cpu().expand(3, -1, -1).permute(1, 2, 0), index), _white(image), name
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise DataError(f"input {index}: an array image must be (H, W, 3) or (H, W), got shape {image.shape}")
        rgb = image[:, :, ::-1] if color == "bgr" else image
        pixels = torch.from_numpy(np.ascontiguousarray(rgb))
        return _checked(pixels, index), _white(pixels), name
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)), 255.0, name
    raise DataError(
        f"input {index} is a {type(image).__name__}; give a path, a numpy array, a PIL image or a (3, H, W) tensor"
    )


def _white(pixels: Tensor) -> float:
    return 255.0 if pixels.dtype == torch.uint8 else 1.0


def _checked(pixels: Tensor, index: int) -> Tensor:
    """``pixels`` when uint8, or float with values in ``[0, 1]``."""
    if pixels.dtype == torch.uint8:
        return pixels.contiguous()
    if not pixels.is_floating_point():
        raise DataError(f"input {index}: image pixels must be uint8 or float in [0, 1], got {pixels.dtype}")
    if pixels.numel() and (pixels.min() < 0.0 or pixels.max() > 1.0):
        raise DataError(f"input {index}: a float image must hold values in [0, 1]; scale it or give uint8")
    return pixels.float().contiguous()


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Float pixels in ``[0, 1]`` as 8-bit, for drawing."""
    return np.ascontiguousarray(np.round(array * 255.0).astype(np.uint8))
