"""The training loop and its files: checkpoints, metrics, distributed setup, the loss.

`train(cfg)` is imported lazily so that checkpoint/metrics utilities load without the model and data code.
"""

from .checkpoint import (
    CheckpointError,
    average_checkpoints,
    find_resume_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .loss import label_smoothed_nll_loss
from .metrics import MetricsLogger


def train(cfg):
    """Train (or resume) the run of a composed Hydra config; returns summary.json's content."""
    from .loop import train as _train

    return _train(cfg)


__all__ = [
    "CheckpointError",
    "MetricsLogger",
    "average_checkpoints",
    "find_resume_checkpoint",
    "label_smoothed_nll_loss",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
