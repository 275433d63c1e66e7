"""Supervised fine-tuning's objective: cross-entropy on the trained tokens only (data.py masks the
rest), over plain or packed rows; the trainer (train/trainer.py) runs it like any other objective."""

from __future__ import annotations

import torch

from ..train.objectives import masked_lm_loss
from .data import SFTBatch


class SFTObjective:
    def loss(self, model, batch: SFTBatch, label_smoothing: float = 0.0, **kwargs) -> torch.Tensor:
        """Mean cross-entropy over the batch's trained tokens (0 with a zero gradient if it has none)."""
        logits = model(batch.inputs, segments=batch.segments, **kwargs)
        total = masked_lm_loss(logits, batch.targets, label_smoothing, reduction="sum")
        return total / max(batch.n_targets, 1)

    def eval_sums(self, model, batch: SFTBatch) -> tuple[float, int]:
        logits = model(batch.inputs, segments=batch.segments)
        return masked_lm_loss(logits, batch.targets, reduction="sum").item(), batch.n_targets
