"""Export a detkit checkpoint to ONNX or TorchScript, and run the exported file like a detkit model.

:func:`export_model` rebuilds the checkpoint's detector (:func:`detkit.engine.build.load_model`,
as ``detkit detect`` does) and traces :class:`ExportWrapper` around it: the wrapper takes ONE
image ``(3, H, W)`` float32 RGB in ``[0, 1]`` at its original size (what
``detkit.data.images.image_to_tensor`` gives; not uint8) and returns flat tensors, what a
:class:`~detkit.structures.Detections` holds:

* ``boxes (D, 4)`` xyxy float32 in the input image's pixels, ``scores (D,)`` float32,
  ``labels (D,)`` int64 in ``0..K-1``;
* with a mask head, ``mask_probs (D, M, M)``: box-relative mask probabilities of each
  detection's class. Pasting them into the image (:func:`decode`, detkit's
  :func:`~detkit.stages.postprocess.paste_masks`) is the one step outside the graph: it
  resizes every mask to its own box's size, a per-detection loop that does not trace.

Everything else is in the graph: preprocessing (normalize, resize, pad), backbone, neck,
heads, box decoding, score threshold, class-wise NMS (``torchvision.ops.batched_nms``, ONNX
``NonMaxSuppression``), RoIAlign (``torchvision.ops.roi_align``, ONNX ``RoiAlign``), top-k and
the rescale to the input's pixels. While tracing, :func:`detkit.ops.boxes.is_exporting` routes
detkit's early-stopping NMS and gather/threaded RoIAlign to the plain torchvision ops (same results).

Sizes. A trace records the Python branches and the Python ``int`` sizes of the run it traced,
and detkit computes sizes in Python (resize scales, padding, anchors):

* **dynamic** -- detectors that resize every image to one fixed size (``model.type:
  single_stage``: SSD, SSDlite, the YOLO grids, the anchor-free YOLO): after the resize every
  size is fixed, and the wrapper rescales the boxes with the input's traced shape, so one file
  takes any ``H x W`` (ONNX ``dynamic_axes`` on ``image``);
* **fixed** -- detectors that keep the aspect ratio (``two_stage``: Faster / Mask R-CNN;
  ``dense``: RetinaNet, FCOS): the file takes images of the traced size only (``--size H W``,
  stored in the metadata as ``image_size``). An ONNX file has that static input shape; a
  TorchScript file is the traced graph inside a scripted guard that raises on any other size;
  :class:`ExportedModel` refuses other sizes with a :class:`~detkit.errors.DataError`.

ONNX goes through the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``):
with torch 2.14 it exports these graphs in a second or two and needs no ``onnxscript``, which
the dynamo exporter does; the dynamo exporter would also specialize the Python ``int`` sizes.
TorchScript is ``torch.jit.trace`` of the wrapper (batch of one image; the file follows the
traced control flow, checked on a second size for the dynamic models).

Metadata (:func:`export_metadata`): class names, the preprocessing settings, the
post-processing settings, detkit and torch versions, model type, input and output names,
whether the size is dynamic, the decode step. ONNX: one ``metadata_props`` entry per key,
each value a JSON string; TorchScript: ``detkit.json`` in the archive's extra files.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detkit.errors import ConfigError, DataError
from detkit.structures import Detections, ImageBatch

#: The formats :func:`export_model` writes.
FORMATS = ("onnx", "torchscript")

#: ``model.type`` values that export, and what limits them.
SUPPORTED_TYPES = {
    "single_stage": "any input size (fixed-size resize inside)",
    "two_stage": "a fixed input size (--size H W)",
    "dense": "a fixed input size (--size H W)",
}

#: The format tag of the metadata.
METADATA_FORMAT = "detkit.export/1"

#: The TorchScript archive's extra file holding the metadata.
TORCHSCRIPT_METADATA = "detkit.json"

INPUT_NAME = "image"
BOX_OUTPUTS = ("boxes", "scores", "labels")
MASK_OUTPUT = "mask_probs"


def _require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or a :class:`ConfigError` saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            f"ONNX export and ONNX models need the onnx and onnxruntime packages ({exc}); "
            "install them with: pip install detkit[export]"
        ) from None
    return onnx, onnxruntime


class ExportWrapper(nn.Module):
    """A detector as a function of one image: ``image (3, H, W) -> boxes, scores, labels[, mask_probs]``.

    Runs the detector's stages in the order of its ``forward`` at inference (see
    :mod:`detkit.detectors`), with two changes a trace needs: with ``dynamic`` the boxes are
    rescaled to the input image with its traced shape instead of Python ints, and masks stay
    box-relative (``(D, M, M)``; :func:`decode` pastes them).

    Args:
        detector: a :class:`~detkit.detectors.DenseDetector` or
            :class:`~detkit.detectors.TwoStageDetector` in eval mode.
        dynamic: the detector resizes every image to a fixed size; any input size works.
    """

    def __init__(self, detector: nn.Module, *, dynamic: bool) -> None:
        super().__init__()
        self.detector = detector
        self.dynamic = dynamic
        self.has_masks = bool(getattr(detector, "has_masks", False))

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        preprocess: Any = self.detector.preprocess
        batch, _ = preprocess([image])
        if self.dynamic:
            # the padded batch's shape as constants (ONNX shape inference then knows it after the
            # resize); boxes stay in the resized pixels and are rescaled below from the traced shape
            fixed_shape = [int(s) for s in batch.tensor.shape]
            batch = dataclasses.replace(
                batch, tensor=batch.tensor.reshape(fixed_shape), original_sizes=list(batch.image_sizes)
            )
        detections = self._detect(batch)
        boxes = detections.boxes
        if self.dynamic:
            resized = torch.tensor(batch.image_sizes[0], dtype=torch.float32)
            ratio = torch._shape_as_tensor(image)[1:].to(torch.float32) / resized  # (h / h', w / w')
            boxes = boxes * torch.stack([ratio[1], ratio[0], ratio[1], ratio[0]]).to(boxes.dtype)
        if not self.has_masks:
            return boxes, detections.scores, detections.labels
        assert detections.masks is not None
        return boxes, detections.scores, detections.labels, detections.masks

    def _detect(self, batch: ImageBatch) -> Detections:
        """The detections of the one image of ``batch``, boxes rescaled, masks box-relative."""
        from detkit.detectors import DenseDetector, TwoStageDetector

        detector = self.detector
        if isinstance(detector, DenseDetector):
            raw, _ = detector.dense_head(batch, detector.extract_features(batch.tensor), None)
            return detector.postprocess(raw, batch)[0]
        assert isinstance(detector, TwoStageDetector)
        features = detector.extract_features(batch.tensor)
        proposals, _ = detector.proposer(batch, features, None)
        raw, _ = detector.roi_head(batch, features, proposals, None)
        (selected,) = detector.roi_head.predict_masks(batch, features, detector.postprocess.select(raw, batch))
        (rescaled,) = detector.postprocess.rescale([selected.replace(masks=None)], batch)
        return rescaled.replace(masks=selected.masks)


class _FixedSizeGuard(nn.Module):
    """A traced fixed-size graph behind a check of the input size (scripted, so the check stays)."""

    def __init__(self, traced: nn.Module, height: int, width: int) -> None:
        super().__init__()
        self.traced = traced
        self.height = height
        self.width = width

    def _check(self, image: Tensor) -> None:
        if image.dim() != 3 or image.shape[0] != 3 or image.shape[1] != self.height or image.shape[2] != self.width:
            raise RuntimeError(
                "this detkit TorchScript model was exported for images of (3, "
                + str(self.height) + ", " + str(self.width) + ") (detkit export --size H W); got "
                + str(image.shape)
            )

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self._check(image)
        return self.traced(image)


class _FixedSizeMaskGuard(_FixedSizeGuard):
    """:class:`_FixedSizeGuard` of a graph that also returns ``mask_probs``."""

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # type: ignore[override]
        self._check(image)
        return self.traced(image)


@dataclass
class ParityReport:
    """The exported model against detkit on one image.

    Attributes:
        image_size: ``(H, W)`` of the image.
        count, exported_count: detections of detkit and of the exported model.
        labels_equal: every detection paired with an exported one of its label and score
            (:func:`compare_detections`; needs equal counts).
        max_box_diff: largest box coordinate difference, pixels (``inf`` when the counts differ).
        max_score_diff: largest score difference.
        mask_mean_abs_diff: mean absolute difference of the pasted mask probabilities.
        mask_min_iou: smallest IoU of a pair of binarized (> 0.5) masks.
    """

    image_size: tuple[int, int]
    count: int
    exported_count: int
    labels_equal: bool
    max_box_diff: float
    max_score_diff: float
    mask_mean_abs_diff: float | None = None
    mask_min_iou: float | None = None

    def ok(self, *, box_tol: float = 0.01, score_tol: float = 1e-4, mask_iou: float = 0.99) -> bool:
        """Whether the exported model gives detkit's detections within the tolerances."""
        masks_ok = self.mask_min_iou is None or self.mask_min_iou >= mask_iou
        return (
            self.count == self.exported_count and self.labels_equal and self.max_box_diff <= box_tol
            and self.max_score_diff <= score_tol and masks_ok
        )

    def line(self) -> str:
        """One line for the console."""
        h, w = self.image_size
        if self.count != self.exported_count:
            return f"{h}x{w} image: detkit {self.count} detections, exported {self.exported_count}: MISMATCH"
        text = (
            f"{h}x{w} image: {self.count} detections, labels {'equal' if self.labels_equal else 'DIFFER'}, "
            f"max box diff {self.max_box_diff:.2g} px, max score diff {self.max_score_diff:.2g}"
        )
        if self.mask_min_iou is not None:
            text += f", mask mean abs diff {self.mask_mean_abs_diff:.2g}, min mask IoU {self.mask_min_iou:.4f}"
        return text + ("" if self.ok() else " (OUTSIDE 0.01 px / 1e-4)")


def compare_detections(reference: Detections, exported: Detections, image_size: tuple[int, int]) -> ParityReport:
    """:class:`ParityReport` of ``exported`` against ``reference`` (the same image).

    Detections are paired, not compared row by row: detections with equal scores (a
    uniform background gives many) may come out of two NMS implementations in either
    order. Each reference detection takes the unpaired exported one of its label whose
    score is within 1e-3 and whose box is closest; ``labels_equal`` says every one found
    a partner. The differences are the largest over the pairs.
    """
    count, exported_count = len(reference), len(exported)
    if count != exported_count:
        return ParityReport(image_size, count, exported_count, False, math.inf, math.inf)
    partner = _pair_detections(reference, exported)
    labels_equal = bool((partner >= 0).all())
    if not labels_equal:
        return ParityReport(image_size, count, exported_count, False, math.inf, math.inf)
    exported = exported[partner]
    box_diff = float((reference.boxes - exported.boxes).abs().max()) if count else 0.0
    score_diff = float((reference.scores - exported.scores).abs().max()) if count else 0.0
    report = ParityReport(image_size, count, exported_count, labels_equal, box_diff, score_diff)
    if reference.masks is not None and exported.masks is not None:
        report.mask_mean_abs_diff = float((reference.masks - exported.masks).abs().mean()) if count else 0.0
        a, b = reference.masks > 0.5, exported.masks > 0.5
        inter = (a & b).flatten(1).sum(1).float()
        union = (a | b).flatten(1).sum(1).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))  # two empty masks agree
        report.mask_min_iou = float(iou.min()) if count else 1.0
    return report


def _pair_detections(reference: Detections, exported: Detections, *, score_tol: float = 1e-3) -> Tensor:
    """``(D,)`` index of each reference detection's partner in ``exported`` (-1: none), greedily in order."""
    box_diff = (reference.boxes[:, None, :] - exported.boxes[None, :, :]).abs().amax(dim=-1)  # (D, D)
    allowed = (reference.labels[:, None] == exported.labels[None, :]) & (
        (reference.scores[:, None] - exported.scores[None, :]).abs() <= score_tol
    )
    cost = torch.where(allowed, box_diff, torch.full_like(box_diff, math.inf))
    partner = torch.full((len(reference),), -1, dtype=torch.int64)
    for i in range(len(reference)):
        j = int(cost[i].argmin()) if cost.shape[1] else 0
        if cost.shape[1] and math.isfinite(float(cost[i, j])):
            partner[i] = j
            cost[:, j] = math.inf
    return partner


def decode(outputs: Sequence[Any], metadata: Mapping[str, Any], image_size: tuple[int, int]) -> Detections:
    """The exported graph's outputs (tensors or numpy arrays, in ``metadata["outputs"]`` order) -> Detections.

    The decode step outside the graph: ``mask_probs (D, M, M)`` are pasted into an image of
    ``image_size (H, W)`` with detkit's :func:`~detkit.stages.postprocess.paste_masks`
    (``masks (D, H, W)`` float probabilities, as detkit's Mask R-CNN gives).
    """
    from detkit.stages.postprocess import paste_masks

    values = {name: torch.as_tensor(np.asarray(v)) for name, v in zip(metadata["outputs"], outputs, strict=True)}
    boxes = values["boxes"].float()
    masks = None
    if MASK_OUTPUT in values:
        masks = paste_masks(values[MASK_OUTPUT].float(), boxes, image_size)
    return Detections(boxes=boxes, scores=values["scores"].float(), labels=values["labels"].long(), masks=masks)


def export_metadata(
    config: Mapping[str, Any], class_names: Sequence[str], *, dynamic: bool, image_size: tuple[int, int],
    has_masks: bool, export_format: str, opset: int | None,
) -> dict[str, Any]:
    """What an exported file records about itself (see the module docstring)."""
    import detkit

    model = config["model"]
    outputs = [*BOX_OUTPUTS, *([MASK_OUTPUT] if has_masks else [])]
    exporter = (
        f"torch.onnx.export (TorchScript-based, dynamo=False), opset {opset}" if export_format == "onnx"
        else "torch.jit.trace" + ("" if dynamic else " in a scripted size check")
    )
    return {
        "format": METADATA_FORMAT,
        "detkit_version": detkit.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "model_type": str(model.get("type", "two_stage")),
        "class_names": [str(n) for n in class_names],
        "preprocess": dict(model["preprocess"]),
        "postprocess": dict(model.get("postprocess") or {}),
        "input": {"name": INPUT_NAME, "shape": [3, "H", "W"], "dtype": "float32", "values": "RGB in [0, 1]"},
        "dynamic_size": dynamic,
        "image_size": list(image_size),
        "outputs": outputs,
        "decode": "paste_masks: mask_probs (D, M, M) box-relative -> masks (D, H, W)" if has_masks else None,
        "exporter": exporter,
    }


def _check_exportable(config: Mapping[str, Any], model: nn.Module) -> str:
    """The model type, or a :class:`ConfigError` naming it and the supported ones."""
    from detkit.detectors import DenseDetector, TwoStageDetector

    model_type = str(config["model"].get("type", "two_stage"))
    supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_TYPES.items())
    if model_type not in SUPPORTED_TYPES or not isinstance(model, DenseDetector | TwoStageDetector):
        raise ConfigError(f"model.type {model_type!r} cannot be exported; supported: {supported}")
    if isinstance(model, TwoStageDetector) and not model.proposer.needs_features:
        raise ConfigError(
            f"model.proposer {config['model']['proposer'].get('name')!r} computes proposals from pixels outside "
            f"torch and cannot be exported; export a detector with the rpn proposer (supported: {supported})"
        )
    if isinstance(model, DenseDetector) and model.dense_head.image_scales() != [1.0]:
        raise ConfigError(f"model.dense_head runs on an image pyramid and cannot be exported; supported: {supported}")
    if int((config["model"].get("postprocess") or {}).get("pre_nms_top_k", 0) or 0) > 0:
        raise ConfigError(
            "model.postprocess.pre_nms_top_k caps the candidates by their count, which a traced graph "
            "cannot follow; export with model.postprocess.pre_nms_top_k=0"
        )
    return model_type


def _is_dynamic(model: nn.Module) -> bool:
    preprocess = getattr(model, "preprocess", None)
    from detkit.detectors import DenseDetector

    return isinstance(model, DenseDetector) and getattr(preprocess, "fixed_size", None) is not None


def _default_size(model: nn.Module) -> tuple[int, int]:
    """The size to trace at when none is given: the fixed size, else a square of the shorter-side target."""
    preprocess: Any = model.preprocess
    fixed = getattr(preprocess, "fixed_size", None)
    if fixed is not None:
        return int(fixed[0]), int(fixed[1])
    side = min(int(preprocess.min_sizes[-1]), int(preprocess.max_size))
    return side, side


def example_image(size: tuple[int, int], *, seed: int = 0) -> Tensor:
    """A generated shapes image (:func:`detkit.data.shapes.render_shapes_image`) cropped to ``size``: ``(3, H, W)``."""
    from detkit.data.shapes import render_shapes_image

    height, width = size
    rgb, _ = render_shapes_image(np.random.default_rng(seed), max(height, width))
    return torch.from_numpy(np.ascontiguousarray(rgb[:height, :width])).permute(2, 0, 1).float().div(255.0)


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how the written file compares with detkit."""

    path: Path
    format: str
    metadata: dict[str, Any]
    parity: list[ParityReport] = field(default_factory=list)


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    *,
    format: str,
    opset: int = 17,
    image_size: Sequence[int] | None = None,
    check: bool = True,
    overrides: Sequence[str] = (),
    cli_plugins: Sequence[str] = (),
) -> ExportResult:
    """Export the detector of a detkit checkpoint to ``out`` (written atomically).

    Args:
        checkpoint: a detkit checkpoint (``best.pt``).
        out: the file to write (``.onnx``; ``.ts`` or ``.pt`` for TorchScript).
        format: ``onnx`` or ``torchscript``.
        opset: the ONNX opset (RoIAlign with ``aligned`` needs 16 or later).
        image_size: ``(H, W)`` to trace at: the only size a fixed-size model takes; for a
            dynamic one just the example's size. Default: the model's fixed size, else a
            square of its ``min_size``.
        check: run the written file on generated images and compare with detkit
            (:attr:`ExportResult.parity`; two sizes for a dynamic model).
        overrides: dotted config overrides applied to the checkpoint's config.
        cli_plugins: plugin modules to load.

    Raises:
        ConfigError: an unknown format, a model type that does not export (naming the
            supported ones), or onnx/onnxruntime missing for ONNX.
    """
    from detkit.engine.build import load_model
    from detkit.io import atomic_path

    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    if format == "onnx":
        onnx, _ = _require_onnx()
    loaded, _ = load_model(checkpoint, overrides=overrides, cli_plugins=cli_plugins)
    model = loaded.model.cpu().eval()
    _check_exportable(loaded.config, model)
    dynamic = _is_dynamic(model)
    size = (int(image_size[0]), int(image_size[1])) if image_size is not None else _default_size(model)
    if min(size) < 1:
        raise ConfigError(f"--size {size[0]} {size[1]}: sides must be at least 1 pixel")
    wrapper = ExportWrapper(model, dynamic=dynamic).eval()
    metadata = export_metadata(
        loaded.config, loaded.class_names, dynamic=dynamic, image_size=size, has_masks=wrapper.has_masks,
        export_format=format, opset=opset if format == "onnx" else None,
    )
    example = example_image(size)
    target = Path(out)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings name every Python int the trace fixes; see the module doc
        if format == "onnx":
            data = _onnx_bytes(wrapper, example, metadata, dynamic=dynamic, opset=opset)
            proto = onnx.load_from_string(data)
            for key, value in metadata.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, json.dumps(value)
            onnx.checker.check_model(proto)
            with atomic_path(target) as tmp:
                onnx.save(proto, str(tmp))
        else:
            scripted = _torchscript_module(wrapper, example, dynamic=dynamic, size=size)
            with atomic_path(target) as tmp:
                torch.jit.save(scripted, str(tmp), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})
    result = ExportResult(target, format, metadata)
    if check:
        images = [example]
        if dynamic:
            images.append(example_image((size[0] * 3 // 2 + 7, max(16, size[1] * 2 // 3)), seed=1))
        result.parity = check_parity(model, ExportedModel.load(target), images)
    return result


def _onnx_bytes(wrapper: ExportWrapper, example: Tensor, metadata: Mapping[str, Any], *, dynamic: bool,
                opset: int) -> bytes:
    """The ONNX model of ``wrapper`` traced on ``example``: dynamic height and width when ``dynamic``."""
    outputs = list(metadata["outputs"])
    axes: dict[str, dict[int, str]] = {name: {0: "detections"} for name in outputs}
    if dynamic:
        axes[INPUT_NAME] = {1: "height", 2: "width"}
    buffer = io.BytesIO()
    try:
        torch.onnx.export(
            wrapper, (example,), buffer,  # type: ignore[arg-type]  # a file object works too
            dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=outputs, dynamic_axes=axes, do_constant_folding=True,
        )
    except Exception as exc:
        raise ConfigError(f"ONNX export (opset {opset}) failed: {exc}") from exc
    return buffer.getvalue()


def _torchscript_module(wrapper: ExportWrapper, example: Tensor, *, dynamic: bool, size: tuple[int, int]) -> Any:
    """``torch.jit.trace`` of ``wrapper``; a fixed-size trace inside a scripted size check."""
    traced = torch.jit.trace(wrapper, (example,), check_trace=False)
    if dynamic:
        return traced
    guard = _FixedSizeMaskGuard if wrapper.has_masks else _FixedSizeGuard
    return torch.jit.script(guard(traced, size[0], size[1]))


def check_parity(detector: nn.Module, exported: ExportedModel, images: Sequence[Tensor]) -> list[ParityReport]:
    """Run detkit's ``detector`` and the exported model on every image; one report per image."""
    reports = []
    with torch.no_grad():
        for image in images:
            (reference,), _ = detector([image])
            (result,), _ = exported([image])
            reports.append(compare_detections(reference, result, (int(image.shape[-2]), int(image.shape[-1]))))
    return reports


def is_exported_file(path: str | Path) -> bool:
    """Whether ``path`` is an ONNX file (``.onnx``) or a TorchScript archive that detkit exported."""
    file = Path(path)
    if file.suffix.lower() == ".onnx":
        return True
    if not file.is_file() or not zipfile.is_zipfile(file):
        return False
    with zipfile.ZipFile(file) as archive:
        return any(name.endswith(f"/extra/{TORCHSCRIPT_METADATA}") for name in archive.namelist())


class ExportedModel(nn.Module):
    """An exported file that behaves like a detkit model: ``model(images) -> (list[Detections], {})``.

    ONNX files run through onnxruntime (CPU), TorchScript files through ``torch.jit.load``;
    one image per call of the exported graph, then :func:`decode`. ``detkit detect
    --weights model.onnx`` runs it through the same :func:`~detkit.engine.predict.detect_files`
    as a checkpoint.

    Attributes:
        metadata: the file's metadata (:func:`export_metadata`).
        class_names: from the metadata.
        has_masks: whether detections carry masks.
    """

    def __init__(self, path: Path, runner: Any, metadata: dict[str, Any], *, onnx: bool) -> None:
        super().__init__()
        self.path = path
        self.runner = runner
        self.metadata = metadata
        self.onnx = onnx
        self.class_names: list[str] = list(metadata["class_names"])
        self.has_masks = MASK_OUTPUT in metadata["outputs"]
        self.dynamic = bool(metadata.get("dynamic_size"))
        self.image_size = tuple(int(v) for v in metadata["image_size"])
        self._device = nn.Parameter(torch.zeros(0), requires_grad=False)  # where detect_files reads the device

    @classmethod
    def load(cls, path: str | Path) -> ExportedModel:
        """Open an exported ONNX or TorchScript file; a :class:`DataError` when it is not one detkit wrote."""
        file = Path(path)
        if not file.is_file():
            raise DataError(f"{str(path)!r}: no such file")
        if file.suffix.lower() == ".onnx":
            _, onnxruntime = _require_onnx()
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # no warnings about unused initializers
            try:
                session = onnxruntime.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise DataError(f"{str(path)!r} is not an ONNX model onnxruntime can run: {exc}") from None
            props = session.get_modelmeta().custom_metadata_map
            if props.get("format") != json.dumps(METADATA_FORMAT):
                raise DataError(f"{str(path)!r} is an ONNX model but not one detkit exported (no detkit metadata)")
            return cls(file, session, {k: json.loads(v) for k, v in props.items()}, onnx=True)
        extra = {TORCHSCRIPT_METADATA: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
                module = torch.jit.load(str(file), map_location="cpu", _extra_files=extra)
        except Exception as exc:
            raise DataError(f"{str(path)!r} is not a TorchScript file: {exc}") from None
        if not extra[TORCHSCRIPT_METADATA]:
            raise DataError(f"{str(path)!r} is a TorchScript file but not one detkit exported (no detkit.json)")
        return cls(file, module, json.loads(extra[TORCHSCRIPT_METADATA]), onnx=False)

    def forward(self, images: list[Tensor], targets: Any = None) -> tuple[list[Detections], dict[str, Tensor]]:
        return [self._detect(image) for image in images], {}

    def _detect(self, image: Tensor) -> Detections:
        image = image.detach().to("cpu", torch.float32).contiguous()
        size = (int(image.shape[-2]), int(image.shape[-1]))
        if not self.dynamic and size != self.image_size:
            h, w = self.image_size
            raise DataError(
                f"{self.path}: this model was exported for {h}x{w} images (model.type "
                f"{self.metadata['model_type']} keeps the aspect ratio, so the size is fixed), got a "
                f"{size[0]}x{size[1]} image; export again with --size {size[0]} {size[1]}"
            )
        if self.onnx:
            outputs = self.runner.run(None, {INPUT_NAME: image.numpy()})
        else:
            with torch.no_grad():
                outputs = self.runner(image)
        return decode(outputs, self.metadata, size)


def load_exported(path: str | Path) -> ExportedModel:
    """:meth:`ExportedModel.load`."""
    return ExportedModel.load(path)


__all__ = [
    "FORMATS",
    "SUPPORTED_TYPES",
    "ExportResult",
    "ExportWrapper",
    "ExportedModel",
    "ParityReport",
    "check_parity",
    "compare_detections",
    "decode",
    "example_image",
    "export_metadata",
    "export_model",
    "is_exported_file",
    "load_exported",
]
