"""From-scratch lecture layers, losses and classic classifiers (CS231n lectures 2-12)."""

from detkit.nn.conv import (
    avg_pool_backward_im2col,
    avg_pool_backward_naive,
    avg_pool_forward_im2col,
    avg_pool_forward_naive,
    col2im,
    conv_backward_im2col,
    conv_backward_naive,
    conv_forward_im2col,
    conv_forward_naive,
    im2col,
    max_pool_backward_im2col,
    max_pool_backward_naive,
    max_pool_forward_im2col,
    max_pool_forward_naive,
)
from detkit.nn.graph import Value
from detkit.nn.knn import KNearestNeighbor, cross_validate_k, l1_distances, l2_distances
from detkit.nn.linear import LinearClassifier, linear_loss, logistic_loss, softmax_loss, svm_loss, weight_penalty

__all__ = [
    "KNearestNeighbor",
    "LinearClassifier",
    "Value",
    "avg_pool_backward_im2col",
    "avg_pool_backward_naive",
    "avg_pool_forward_im2col",
    "avg_pool_forward_naive",
    "col2im",
    "conv_backward_im2col",
    "conv_backward_naive",
    "conv_forward_im2col",
    "conv_forward_naive",
    "cross_validate_k",
    "im2col",
    "l1_distances",
    "l2_distances",
    "linear_loss",
    "logistic_loss",
    "max_pool_backward_im2col",
    "max_pool_backward_naive",
    "max_pool_forward_im2col",
    "max_pool_forward_naive",
    "softmax_loss",
    "svm_loss",
    "weight_penalty",
]
