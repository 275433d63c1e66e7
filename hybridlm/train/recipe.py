"""`Recipe`: what a fine-tuning method (finetune/) hands the trainer in place of a preset's token
shards and objective. The loop, optimizer, schedule, checkpoints and resume stay the trainer's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn


@dataclass
class Recipe:
    train_data: Any  # micro_batch(seen, global_batch, rank, world, micro, size) -> batch with .to(device); vocab_size
    val_data: Any | None  # validation_batches(n, rank, world, size) -> list of batches, or None
    objective: Any  # loss(model, batch, label_smoothing, **kw) -> tensor; eval_sums(model, batch) -> (sum, count[, {field: sum}])
    trainable_only: bool = False  # checkpoints hold the parameters that train (adapters); the frozen rest comes from the base
    export: Callable[[nn.Module, Path], str] | None = None  # at the end (rank 0): write the result into the run dir, say what
