"""Explain a classifier or a detector (CS231n lecture 12), one PNG per method.

:func:`explain_classifier` and :func:`explain_detector` run the methods of
:mod:`detkit.explain.saliency` and :mod:`detkit.explain.features` on a ready model and
write each figure atomically into an output folder:

==============  =========================================================  ==========  ========
method          figure                                                     classifier  detector
==============  =========================================================  ==========  ========
saliency        ``|d score / d pixel|`` (max over channels)                 yes         yes
occlusion       score drop when a grey patch hides each region              yes         yes
filters         the first convolution's filters                             yes         yes
activations     the feature maps of one layer (``layer``)                   yes         yes
neighbors       test images and their nearest training images (features)    yes         --
embedding       PCA and t-SNE of penultimate features, coloured by class    yes         --
class_model     one synthesised image per class (Simonyan et al.)           yes         --
deepdream       the image after amplifying ``layer``'s activations          yes         yes
==============  =========================================================  ==========  ========

The *score* of a classifier is the logit of the predicted class; that of a
detector is the score of one detection (``detection``: its index, default the
best), found again in perturbed images as the same-class detection overlapping
its box (:class:`~detkit.explain.saliency.DetectionScore`).

Figures are drawn on :class:`~matplotlib.figure.Figure` with the Agg canvas
(no display, no pyplot state). Images are ``(C, H, W)`` floats in ``[0, 1]``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from detkit.explain.features import (
    default_layer,
    embed_2d,
    first_conv,
    get_layer,
    nearest_neighbors,
    penultimate_features,
)
from detkit.explain.methods import CLASSIFIER_METHODS, DETECTOR_METHODS
from detkit.explain.saliency import (
    ClassScore,
    DetectionScore,
    class_model_visualization,
    deep_dream,
    detector_forward,
    layer_output,
    occlusion_map,
    saliency_map,
)
from detkit.io import atomic_path

__all__ = [
    "CLASSIFIER_METHODS",
    "DETECTOR_METHODS",
    "ExplainOptions",
    "explain_classifier",
    "explain_detector",
    "save_activations",
    "save_embedding",
    "save_filters",
    "save_heatmap",
    "save_image_grid",
    "save_neighbors",
]

@dataclass(frozen=True)
class ExplainOptions:
    """Settings of the methods (the defaults suit small images on a CPU).

    Attributes:
        layer: dotted module name for ``activations`` and ``deepdream`` (default:
            a middle convolution of the backbone, :func:`~detkit.explain.features.default_layer`).
        occlusion_patch: occluder side in pixels (default: 1/8 of the shorter side).
        occlusion_stride: occluder step (default: half the patch).
        k: neighbours per query; ``num_queries``: query images.
        embedding_points: at most this many test images are embedded.
        class_model_steps, deepdream_steps: gradient-ascent steps.
        max_channels: activation maps shown at most.
        seed: randomness of jitter, t-SNE and sampling.
    """

    layer: str | None = None
    occlusion_patch: int | None = None
    occlusion_stride: int | None = None
    k: int = 5
    num_queries: int = 5
    embedding_points: int = 500
    class_model_steps: int = 200
    deepdream_steps: int = 20
    max_channels: int = 64
    seed: int = 0


# ----------------------------------------------------------------------------- drawing


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    return target


def _as_display(image: Tensor) -> np.ndarray:
    """``(C, H, W)`` in ``[0, 1]`` -> ``(H, W)`` (gray) or ``(H, W, 3)`` numpy for ``imshow``."""
    x = image.detach().float().cpu().clamp(0, 1)
    if x.shape[0] == 1:
        return x[0].numpy()
    if x.shape[0] == 3:
        return x.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    return x.mean(0).numpy()


def _show(ax: Axes, image: Tensor, title: str | None = None) -> None:
    ax.imshow(_as_display(image), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize="small")


def _draw_box(ax: Axes, box: Tensor | None) -> None:
    if box is None:
        return
    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1.5))


def _normalize_each(tiles: Tensor) -> Tensor:
    """Min-max scale every tile ``(N, ...)`` to ``[0, 1]`` on its own (constant tiles become 0.5)."""
    flat = tiles.detach().float().flatten(1)
    low = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp(min=1e-12), torch.full_like(flat, 0.5))
    return scaled.reshape(tiles.shape)


def _mosaic(tiles: Tensor, *, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """``(N, C, h, w)`` tiles in ``[0, 1]`` (C = 1 or 3) -> one ``(H, W)`` or ``(H, W, 3)`` array.

    Gaps are NaN (drawn transparent, so the figure's white shows) for one channel, white for three.
    """
    n, c, h, w = tiles.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.nan if c == 1 else 1.0, dtype=np.float32)
    for i, tile in enumerate(tiles.detach().cpu().float()):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y : y + h, x : x + w] = tile.permute(1, 2, 0).numpy()  # (C, h, w) -> (h, w, C)
    return canvas[:, :, 0] if c == 1 else canvas


def save_filters(conv: nn.Conv2d, path: str | os.PathLike[str], *, title: str = "first-layer filters") -> Path:
    """Draw the filters ``(O, I, kh, kw)`` of ``conv`` as a grid, each scaled to its own range.

    Filters over 3 input channels are shown in colour (RGB), others as the mean over inputs.
    """
    weight = conv.weight.detach().cpu().float()
    if weight.shape[1] not in (1, 3):
        weight = weight.mean(1, keepdim=True)  # (O, I, kh, kw) -> (O, 1, kh, kw)
    mosaic = _mosaic(_normalize_each(weight))
    fig = _new_figure(6, 6)
    ax = fig.add_subplot()
    ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{title}: {tuple(conv.weight.shape)}", fontsize="small")
    return _save(fig, path)


def save_activations(
    activations: Tensor,
    path: str | os.PathLike[str],
    *,
    title: str,
    image: Tensor | None = None,
    max_channels: int = 64,
) -> Path:
    """Draw the maps ``(C, h, w)`` of one image as a grid (each scaled to its own range), beside the image."""
    maps = activations.detach().cpu().float()[:max_channels, None]  # (C, h, w) -> (C, 1, h, w)
    fig = _new_figure(10 if image is not None else 7, 6)
    axes = fig.subplots(1, 2, width_ratios=[1, 2.5]) if image is not None else [fig.add_subplot()]
    if image is not None:
        _show(axes[0], image, "input")
    axes[-1].imshow(_mosaic(_normalize_each(maps)), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes[-1].set_axis_off()
    axes[-1].set_title(f"{title} ({min(activations.shape[0], max_channels)} of {activations.shape[0]} maps)",
                       fontsize="small")
    return _save(fig, path)


def save_heatmap(
    image: Tensor,
    heat: Tensor,
    path: str | os.PathLike[str],
    *,
    title: str,
    box: Tensor | None = None,
    diverging: bool = False,
) -> Path:
    """Three panels: the image (with ``box``), the heat map ``(H, W)`` and the two overlaid.

    Args:
        diverging: a signed map (occlusion: the score can also rise), drawn red for
            positive and blue for negative, symmetric around 0.
    """
    h = heat.detach().cpu().float().numpy()
    if diverging:
        limit = float(np.abs(h).max()) or 1.0
        cmap, vmin, vmax = "RdBu_r", -limit, limit
    else:
        cmap, vmin, vmax = "hot", 0.0, float(h.max()) or 1.0
    fig = _new_figure(11, 4)
    axes = fig.subplots(1, 3)
    _show(axes[0], image, "input")
    _draw_box(axes[0], box)
    shown = axes[1].imshow(h, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    axes[1].set_axis_off()
    axes[1].set_title(title, fontsize="small")
    fig.colorbar(shown, ax=axes[1], shrink=0.8)
    _show(axes[2], image, "overlay")
    axes[2].imshow(h, cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.55, interpolation="bilinear")
    _draw_box(axes[2], box)
    return _save(fig, path)


def save_image_grid(
    images: Tensor, path: str | os.PathLike[str], *, titles: Sequence[str], suptitle: str, cols: int | None = None,
) -> Path:
    """Draw images ``(N, C, H, W)`` in ``[0, 1]`` in a grid with a title each."""
    n = images.shape[0]
    cols = cols or min(n, 5)
    rows = math.ceil(n / cols)
    fig = _new_figure(2.2 * cols, 2.4 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, image, name in zip(axes, images, titles):
        _show(ax, image, name)
    fig.suptitle(suptitle)
    return _save(fig, path)


def save_neighbors(
    queries: Tensor,
    neighbors: Tensor,
    path: str | os.PathLike[str],
    *,
    query_titles: Sequence[str],
    neighbor_titles: Sequence[Sequence[str]],
) -> Path:
    """One row per query ``(Q, C, H, W)``: the query, then its neighbours ``(Q, k, C, H, W)``."""
    q, k = neighbors.shape[:2]
    fig = _new_figure(1.6 * (k + 1), 1.8 * q + 0.4)
    axes = fig.subplots(q, k + 1, squeeze=False)
    for row in range(q):
        _show(axes[row, 0], queries[row], f"query: {query_titles[row]}")
        for col in range(k):
            _show(axes[row, col + 1], neighbors[row, col], neighbor_titles[row][col])
    fig.suptitle("nearest training images in penultimate-layer feature space")
    return _save(fig, path)


def save_embedding(
    coords: np.ndarray, labels: Sequence[int], class_names: Sequence[str], path: str | os.PathLike[str], *, title: str
) -> Path:
    """Scatter ``(N, 2)`` points coloured by class, with a legend of class names."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    labels_np = np.asarray(labels)
    fig = _new_figure(7, 6)
    ax = fig.add_subplot()
    for k, name in enumerate(class_names):
        sel = labels_np == k
        if sel.any():
            ax.scatter(coords[sel, 0], coords[sel, 1], s=10, color=cmap(k % cmap.N), label=name, alpha=0.8)
    ax.set_title(title)
    ax.legend(fontsize="small", markerscale=2, loc="best", ncols=2 if len(class_names) > 10 else 1)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


# ----------------------------------------------------------------------------- orchestration


def _check_methods(methods: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    from detkit.errors import DetkitError, did_you_mean

    for m in methods:
        if m not in allowed:
            hint = did_you_mean(m, allowed) if m not in CLASSIFIER_METHODS else " (it needs a classifier and its data)"
            raise DetkitError(f"method {m!r} does not apply to a {what}{hint}; use some of: {', '.join(allowed)}")
    return [m for m in allowed if m in methods]


def _occlusion_settings(image: Tensor, options: ExplainOptions) -> tuple[int, int]:
    patch = options.occlusion_patch or max(1, min(image.shape[-2:]) // 8)
    stride = options.occlusion_stride or max(1, patch // 2)
    return patch, stride


def _common(
    model: nn.Module,
    forward: Callable[[Tensor], Any],
    score: Callable[[Tensor], Tensor],
    image: Tensor,
    out: Path,
    methods: Sequence[str],
    options: ExplainOptions,
    *,
    what: str,
    fill: float | Tensor,
    box: Tensor | None,
) -> dict[str, Path]:
    """The methods classifiers and detectors share."""
    written: dict[str, Path] = {}
    layer_name = options.layer or default_layer(model)
    if "saliency" in methods:
        written["saliency"] = save_heatmap(
            image, saliency_map(score, image), out / "saliency.png", title=f"saliency |d score/d pixel| of {what}",
            box=box,
        )
    if "occlusion" in methods:
        patch, stride = _occlusion_settings(image, options)
        heat = occlusion_map(score, image, patch=patch, stride=stride, fill=fill)
        written["occlusion"] = save_heatmap(
            image, heat, out / "occlusion.png", title=f"drop of {what} (patch {patch}, stride {stride})", box=box,
            diverging=True,
        )
    if "filters" in methods:
        written["filters"] = save_filters(first_conv(model), out / "filters.png")
    if "activations" in methods:
        with torch.no_grad():
            maps = layer_output(forward, get_layer(model, layer_name), image[None])[0]
        written["activations"] = save_activations(
            maps, out / "activations.png", title=f"activations of {layer_name}", image=image,
            max_channels=options.max_channels,
        )
    if "deepdream" in methods:
        dream = deep_dream(
            forward, get_layer(model, layer_name), image, steps=options.deepdream_steps, seed=options.seed
        )
        written["deepdream"] = save_image_grid(
            torch.stack([image, dream]), out / "deepdream.png", titles=["input", f"dream ({layer_name})"],
            suptitle="DeepDream",
        )
    return written


def explain_classifier(
    model: nn.Module,
    *,
    class_names: Sequence[str],
    image: Tensor,
    out_dir: str | os.PathLike[str],
    methods: Sequence[str] = CLASSIFIER_METHODS,
    train_images: Tensor | None = None,
    train_labels: Tensor | None = None,
    test_images: Tensor | None = None,
    test_labels: Tensor | None = None,
    options: ExplainOptions | None = None,
) -> dict[str, Path]:
    """Run ``methods`` on a classifier and write one PNG each into ``out_dir``.

    Args:
        model: ``(N, C, H, W) -> (N, K)`` logits, in eval mode. When it has
            ``pixel_mean`` (a detkit classifier) that is the occluder's colour and
            the class models' neutral image.
        class_names: ``K`` names.
        image: ``(C, H, W)`` the image explained by saliency, occlusion,
            activations and DeepDream; the target is its predicted class.
        train_images, train_labels: the neighbour bank ``(N, C, H, W)``, ``(N,)``
            (needed by ``neighbors``).
        test_images, test_labels: queries and embedded points (needed by
            ``neighbors`` and ``embedding``).

    Returns:
        ``{method: png path}``.

    Raises:
        DetkitError: an unknown method, or one whose data is missing.
    """
    from detkit.errors import DetkitError

    options = options or ExplainOptions()
    methods = _check_methods(methods, CLASSIFIER_METHODS, "classifier")
    needs_data = {"neighbors": (train_images, test_images), "embedding": (test_images,)}
    for m, data in needs_data.items():
        if m in methods and any(d is None for d in data):
            raise DetkitError(f"method {m!r} needs the classifier's training and test images")
    out = Path(out_dir)
    mean = getattr(model, "pixel_mean", None)
    neutral: float | Tensor = mean.detach().flatten() if isinstance(mean, Tensor) else 0.5
    with torch.no_grad():
        predicted = int(model(image[None]).argmax(1)[0])
    what = f"class {class_names[predicted]!r} (predicted)"
    written = _common(
        model, model, ClassScore(model, predicted), image, out, methods, options, what=what,
        fill=neutral, box=None,
    )
    if "neighbors" in methods:
        assert train_images is not None and train_labels is not None
        assert test_images is not None and test_labels is not None
        # the explained image first, then test images (without the explained one if it is a test image)
        others = [i for i in range(test_images.shape[0]) if not torch.equal(test_images[i], image)]
        others = others[: max(options.num_queries - 1, 0)]
        queries = torch.cat([image[None], test_images[others]])
        query_names = [f"predicted {class_names[predicted]}", *(class_names[int(test_labels[i])] for i in others)]
        bank = penultimate_features(model, train_images)
        index, dist = nearest_neighbors(penultimate_features(model, queries), bank, options.k)
        written["neighbors"] = save_neighbors(
            queries, train_images[index], out / "neighbors.png", query_titles=query_names,
            neighbor_titles=[[f"{class_names[int(train_labels[j])]} d={d:.2f}" for j, d in zip(row, drow.tolist())]
                             for row, drow in zip(index, dist)],
        )
    if "embedding" in methods:
        assert test_images is not None and test_labels is not None
        n = min(options.embedding_points, test_images.shape[0])
        pick = torch.randperm(test_images.shape[0], generator=torch.Generator().manual_seed(options.seed))[:n]
        feats = penultimate_features(model, test_images[pick])
        labels = test_labels[pick].tolist()
        for method in ("pca", "tsne"):
            written[f"embedding_{method}"] = save_embedding(
                embed_2d(feats, method, seed=options.seed), labels, class_names, out / f"embedding_{method}.png",
                title=f"{method.upper() if method == 'pca' else 't-SNE'} of penultimate features ({n} test images)",
            )
    if "class_model" in methods:
        shape = (int(image.shape[0]), int(image.shape[1]), int(image.shape[2]))
        synth = class_model_visualization(
            model, list(range(len(class_names))), shape, neutral=neutral, steps=options.class_model_steps,
            seed=options.seed,
        )
        written["class_model"] = save_image_grid(
            synth, out / "class_model.png", titles=list(class_names),
            suptitle="class models: argmax_I score_k(I) - lambda ||I - mean||^2",
        )
    return written


def explain_detector(
    detector: nn.Module,
    *,
    class_names: Sequence[str],
    image: Tensor,
    out_dir: str | os.PathLike[str],
    methods: Sequence[str] = DETECTOR_METHODS,
    detection: int | None = None,
    options: ExplainOptions | None = None,
) -> dict[str, Path]:
    """Run ``methods`` on one detection of a detkit detector and write one PNG each into ``out_dir``.

    The detector runs once on ``image`` to pick detection ``detection`` (index in
    its output, default the highest score); the explained score is that
    detection's, from differentiable forward passes (:class:`DetectionScore`).

    Args:
        detector: a detkit detector in eval mode, ``detector(list of (3, H, W))``.
        image: ``(3, H, W)`` RGB in ``[0, 1]``.

    Returns:
        ``{method: png path}``.

    Raises:
        DetkitError: an unknown method, one that needs a classifier, no detection
            in the image, or ``detection`` out of range.
    """
    options = options or ExplainOptions()
    methods = _check_methods(methods, DETECTOR_METHODS, "detector")
    score, picked = DetectionScore.pick(detector, image, detection)
    name = class_names[picked.label] if 0 <= picked.label < len(class_names) else str(picked.label)
    what = f"detection {picked.index} ({name}, {picked.score:.2f})"

    def forward(x: Tensor) -> Any:
        return detector_forward(detector, x)

    return _common(
        detector, forward, score, image, Path(out_dir), methods, options, what=what, fill=0.5, box=picked.box,
    )
