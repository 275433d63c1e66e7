"""The training objective: next-token cross-entropy, plus the MoE load-balancing loss."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
            reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) against targets (B, T) int64, in float32 whatever the
    autocast dtype (a bf16 log-softmax over a large vocabulary loses digits of the loss)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), label_smoothing=label_smoothing,
                           reduction=reduction)


def new_moe_stats(model_config) -> object | None:
    """A fresh expert-utilisation collector for one forward of a model with MoE blocks, else None
    (dense models are called without one)."""
    if "moe" not in model_config.blocks:
        return None
    from ..nn.moe import MoEStats  # only MoE models need it

    return MoEStats()


def moe_log_fields(stats) -> dict:
    """Scalars and the per-expert share of routed choices (averaged over MoE layers) for the log."""
    routed = stats.routed.double()  # (L, E)
    load = (routed / routed.sum(-1, keepdim=True).clamp(min=1)).mean(0)
    return {**stats.summary(), "expert_load": [round(v, 4) for v in load.tolist()]}


def mean_fields(entries: list[dict]) -> dict:
    """Element-wise mean of log fields (numbers, or lists of numbers) over micro-batches."""
    out = {}
    for key, first in entries[0].items():
        if isinstance(first, list):
            out[key] = [round(sum(col) / len(entries), 4) for col in zip(*(e[key] for e in entries))]
        else:
            out[key] = sum(e[key] for e in entries) / len(entries)
    return out
