"""Training engine: optimizers and schedules, checkpoints, the training loop."""

from detkit.engine.checkpoint import load_checkpoint, load_state, save_checkpoint
from detkit.engine.optim import build_optimizer, build_scheduler
from detkit.engine.trainer import Trainer, TrainResult, TrainSettings, train

__all__ = [
    "TrainResult",
    "TrainSettings",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "load_checkpoint",
    "load_state",
    "save_checkpoint",
    "train",
]
