"""What a network has learned (CS231n lecture 12): filters, activations, feature spaces.

* first-layer filters (:func:`first_conv`): the only weights that live in pixel
  space, so the only ones that can be looked at directly;
* activation maps of a layer (:func:`detkit.explain.saliency.layer_output`);
* the penultimate layer's features (:func:`penultimate_features`): nearest
  neighbours there (:func:`nearest_neighbors`) group images by meaning rather
  than by pixels, and their 2-D embeddings (:func:`embed_2d`, PCA or t-SNE) show
  the classes as clusters.

Shape glossary: N images, Q queries, D feature size, k neighbours.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "conv_layer_names",
    "default_layer",
    "embed_2d",
    "first_conv",
    "get_layer",
    "nearest_neighbors",
    "penultimate_features",
]


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first :class:`~torch.nn.Conv2d` of ``model`` in registration order (the layer that sees pixels).

    Raises:
        ValueError: the model has no convolution.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ValueError(f"{type(model).__name__} has no Conv2d layer, so no filters to show")


def conv_layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every :class:`~torch.nn.Conv2d` in ``model``, in registration order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def default_layer(model: nn.Module) -> str:
    """A middle convolution: of the backbone (``backbone.*``) when the model has one, else of the model.

    Middle layers are where activations and DeepDream are most telling: first
    layers show edges, the last ones are too coarse to see.
    """
    names = conv_layer_names(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer")
    backbone = [n for n in names if n.startswith("backbone.")]
    names = backbone or names
    return names[len(names) // 2]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name`` (dotted, as in ``named_modules``).

    Raises:
        ValueError: no such layer; the message lists the convolutions.
    """
    modules = dict(model.named_modules())
    if name not in modules or not name:
        convs = conv_layer_names(model)
        shown = ", ".join(convs[:20]) + (f" ... ({len(convs)} in all)" if len(convs) > 20 else "")
        raise ValueError(f"the model has no layer {name!r}; its convolutions are: {shown}")
    return modules[name]


def _last_linear(model: nn.Module) -> nn.Linear:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise ValueError(f"{type(model).__name__} has no Linear layer, so no penultimate features")
    return last


def penultimate_features(
    model: nn.Module, images: Tensor, *, batch_size: int = 256, forward: Callable[[Tensor], Any] | None = None
) -> Tensor:
    """The input of the model's last :class:`~torch.nn.Linear` (the classifier) for each image.

    Args:
        model: a classifier whose last registered Linear is its output layer.
        images: ``(N, C, H, W)``.
        forward: how to run the model (default ``model(x)``).

    Returns:
        ``(N, D)`` features, on the CPU.
    """
    layer = _last_linear(model)
    run = forward or model
    store: list[Tensor] = []

    def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        store.append(inputs[0].detach().flatten(1).cpu())

    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                run(images[start : start + batch_size])
    finally:
        handle.remove()
    return torch.cat(store) if store else images.new_zeros((0, layer.in_features))


def nearest_neighbors(queries: Tensor, bank: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest rows of ``bank`` ``(N, D)`` to each query ``(Q, D)`` by Euclidean distance.

    Returns:
        ``(indices, distances)``, both ``(Q, k)``, nearest first.
    """
    from detkit.lectures.knn import l2_distances

    k = min(k, bank.shape[0])
    distances = torch.from_numpy(l2_distances(queries.detach().cpu().numpy(), bank.detach().cpu().numpy()))  # (Q, N)
    values, indices = distances.topk(k, dim=1, largest=False)
    return indices, values.float()


def embed_2d(features: Tensor, method: str = "pca", *, seed: int = 0) -> np.ndarray:
    """A 2-D embedding of ``(N, D)`` features: ``"pca"`` (linear) or ``"tsne"`` (neighbourhoods).

    t-SNE (scikit-learn, PCA initialisation, perplexity at most 30 and below ``N /
    3``) is quadratic in ``N``: keep ``N`` to a few thousand.

    Returns:
        ``(N, 2)`` coordinates.
    """
    x = features.detach().cpu().double().numpy()
    if x.shape[0] < 3:
        raise ValueError(f"need at least 3 points to embed, got {x.shape[0]}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return np.asarray(PCA(n_components=2, random_state=seed).fit_transform(x))
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (x.shape[0] - 1) / 3))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return np.asarray(tsne.fit_transform(x))
    raise ValueError(f"unknown embedding method {method!r}; use 'pca' or 'tsne'")
