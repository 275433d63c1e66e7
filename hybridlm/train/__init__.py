"""Pre-training: the trainer, optimizer and schedule, checkpoint/resume, distributed (torchrun).

`TrainConfig` is light to import (the CLI builds its options from it); the trainer itself, which
pulls in the models and torch.distributed, loads on first use of `train`, `TrainResult` or `read_log`.
"""

from .config import TrainConfig, TrainConfigError

_LAZY = ("TrainResult", "read_log", "train")
__all__ = ["TrainConfig", "TrainConfigError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
