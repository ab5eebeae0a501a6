"""From-scratch lecture layers, losses, optimizers and classic classifiers (CS231n lectures 2-11).

Lecture code, not toolkit code: each module re-derives one piece of the course and
is tested against torch, scikit-learn or a numeric gradient. The detectors never
import it; ``detkit classify`` uses its optimizers, schedules, augmentation and the
classic classifiers.

Naming: where a lecture name is already a public name of ``torch.nn``,
``torch.nn.functional`` or ``torch.optim``, it carries a ``Scratch`` prefix
(classes) or a ``scratch_`` prefix (functions), here and in the modules, so the
lecture version and torch's can be imported side by side and never shadow each
other: :class:`ScratchReLU` vs ``nn.ReLU``, :func:`scratch_relu` vs ``F.relu``,
:class:`ScratchSGD` vs ``torch.optim.SGD``. Names torch does not use keep their
lecture spelling: ``Maxout``, ``BatchNorm``, ``SGDMomentum``, and ``AdaGrad`` /
``RMSProp`` (torch spells them ``Adagrad`` / ``RMSprop``).
"""

from detkit.lectures.activations import (
    Maxout,
    ScratchELU,
    ScratchLeakyReLU,
    ScratchPReLU,
    ScratchReLU,
    ScratchSigmoid,
    ScratchTanh,
    maxout,
    scratch_elu,
    scratch_leaky_relu,
    scratch_prelu,
    scratch_relu,
    scratch_sigmoid,
    scratch_tanh,
)
from detkit.lectures.augment import (
    ColorJitterParams,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    color_jitter,
    color_jitter_params,
    horizontal_flip,
    pca_lighting,
    random_horizontal_flip,
    random_resized_crop,
    random_resized_crop_params,
    rgb_pca,
    to_grayscale,
)
from detkit.lectures.babysit import (
    InitialLossReport,
    LRRangeResult,
    initial_loss_check,
    lr_range_test,
    overfit_small_subset,
)
from detkit.lectures.batchnorm import BatchNorm, ScratchBatchNorm1d, ScratchBatchNorm2d, scratch_batch_norm
from detkit.lectures.conv import (
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
from detkit.lectures.ensembles import (
    Ensemble,
    SnapshotResult,
    cyclic_cosine_lr,
    ensemble_predict,
    snapshot_models,
    train_snapshot_ensemble,
)
from detkit.lectures.graph import Value
from detkit.lectures.init import compute_fans, he_normal_, init_weights_, xavier_normal_
from detkit.lectures.knn import KNearestNeighbor, cross_validate_k, l1_distances, l2_distances
from detkit.lectures.linear import (
    LinearClassifier,
    linear_loss,
    logistic_loss,
    softmax_loss,
    svm_loss,
    weight_penalty,
)
from detkit.lectures.optim import (
    OPTIMIZERS,
    AdaGrad,
    LBFGSResult,
    Nesterov,
    RMSProp,
    ScratchAdam,
    ScratchSGD,
    SGDMomentum,
    build_optimizer,
    lbfgs_minimize,
)
from detkit.lectures.preprocess import Preprocessor, channel_mean_std, fit_preprocessor, mean_image
from detkit.lectures.regularization import DropConnectLinear, ScratchDropout, l2_penalty, scratch_dropout
from detkit.lectures.rnn import ScratchLSTM, ScratchLSTMCell, ScratchRNN, ScratchRNNCell, lstm_cell, rnn_cell, unroll
from detkit.lectures.schedules import (
    cosine_decay,
    cosine_decay_scheduler,
    exponential_decay,
    exponential_decay_scheduler,
    step_decay,
    step_decay_scheduler,
)
from detkit.lectures.search import SearchSpace, Trial, random_search, sample_params
from detkit.lectures.transfer import fine_tune_last, freeze_all_but_head, trainable_parameters
from detkit.lectures.upsample import (
    ScratchConvTranspose2d,
    bed_of_nails,
    nearest_upsample,
    scratch_conv_transpose2d,
    scratch_max_unpool2d,
)

__all__ = [
    # Lecture 2
    "KNearestNeighbor",
    "cross_validate_k",
    "l1_distances",
    "l2_distances",
]
__all__ += [
    # Lecture 3
    "LinearClassifier",
    "linear_loss",
    "logistic_loss",
    "softmax_loss",
    "svm_loss",
    "weight_penalty",
]
__all__ += [
    # Lecture 4
    "Value",
]
__all__ += [
    # Lecture 5
    "avg_pool_backward_im2col",
    "avg_pool_backward_naive",
    "avg_pool_forward_im2col",
    "avg_pool_forward_naive",
    "col2im",
    "conv_backward_im2col",
    "conv_backward_naive",
    "conv_forward_im2col",
    "conv_forward_naive",
    "im2col",
    "max_pool_backward_im2col",
    "max_pool_backward_naive",
    "max_pool_forward_im2col",
    "max_pool_forward_naive",
]
__all__ += [
    # Lecture 6
    "BatchNorm",
    "InitialLossReport",
    "LRRangeResult",
    "Maxout",
    "Preprocessor",
    "ScratchBatchNorm1d",
    "ScratchBatchNorm2d",
    "ScratchELU",
    "ScratchLeakyReLU",
    "ScratchPReLU",
    "ScratchReLU",
    "ScratchSigmoid",
    "ScratchTanh",
    "SearchSpace",
    "Trial",
    "channel_mean_std",
    "compute_fans",
    "fit_preprocessor",
    "he_normal_",
    "init_weights_",
    "initial_loss_check",
    "lr_range_test",
    "maxout",
    "mean_image",
    "overfit_small_subset",
    "random_search",
    "sample_params",
    "scratch_batch_norm",
    "scratch_elu",
    "scratch_leaky_relu",
    "scratch_prelu",
    "scratch_relu",
    "scratch_sigmoid",
    "scratch_tanh",
    "xavier_normal_",
]
__all__ += [
    # Lecture 7
    "OPTIMIZERS",
    "AdaGrad",
    "ColorJitterParams",
    "DropConnectLinear",
    "Ensemble",
    "LBFGSResult",
    "Nesterov",
    "RMSProp",
    "SGDMomentum",
    "ScratchAdam",
    "ScratchDropout",
    "ScratchSGD",
    "SnapshotResult",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "build_optimizer",
    "color_jitter",
    "color_jitter_params",
    "cosine_decay",
    "cosine_decay_scheduler",
    "cyclic_cosine_lr",
    "ensemble_predict",
    "exponential_decay",
    "exponential_decay_scheduler",
    "fine_tune_last",
    "freeze_all_but_head",
    "horizontal_flip",
    "l2_penalty",
    "lbfgs_minimize",
    "pca_lighting",
    "random_horizontal_flip",
    "random_resized_crop",
    "random_resized_crop_params",
    "rgb_pca",
    "scratch_dropout",
    "snapshot_models",
    "step_decay",
    "step_decay_scheduler",
    "to_grayscale",
    "train_snapshot_ensemble",
    "trainable_parameters",
]
__all__ += [
    # Lecture 10
    "ScratchLSTM",
    "ScratchLSTMCell",
    "ScratchRNN",
    "ScratchRNNCell",
    "lstm_cell",
    "rnn_cell",
    "unroll",
]
__all__ += [
    # Lecture 11
    "ScratchConvTranspose2d",
    "bed_of_nails",
    "nearest_upsample",
    "scratch_conv_transpose2d",
    "scratch_max_unpool2d",
]
