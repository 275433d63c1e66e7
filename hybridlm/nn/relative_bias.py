"""T5's relative position bias (Raffel et al. 2020, section 2.1): a learned scalar per head and
distance bucket, added to the attention logits. Computed once per forward and shared by every
layer of a stack (the first layer owns the table).

Buckets: half of them (each direction, when bidirectional) hold exact distances 0 .. n/2 - 1; the
rest cover distances up to `max_distance` logarithmically; longer distances share the last bucket.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig


def relative_bucket(distance: torch.Tensor, bidirectional: bool, n_buckets: int, max_distance: int) -> torch.Tensor:
    """distance = key position - query position (any shape, int64) -> bucket index, same shape.

    Causal (bidirectional=False): keys ahead of the query (distance > 0) share bucket 0 with the
    query itself; the causal mask hides them anyway.
    """
    bucket = torch.zeros_like(distance)
    if bidirectional:
        n_buckets //= 2
        bucket += (distance > 0).long() * n_buckets
        distance = distance.abs()
    else:
        distance = (-distance).clamp(min=0)
    exact = n_buckets // 2
    # log-spaced buckets beyond `exact`; the clamp keeps log() finite where the exact branch is taken
    log_ratio = torch.log(distance.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
    large = (exact + (log_ratio * (n_buckets - exact)).long()).clamp(max=n_buckets - 1)
    return bucket + torch.where(distance < exact, distance, large)


class RelativePositionBias(nn.Module):
    """The per-head bias table of one stack (encoder: bidirectional, decoder: causal)."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.n_buckets, self.max_distance = cfg.relative_buckets, cfg.relative_max_distance
        self.embed = nn.Embedding(cfg.relative_buckets, cfg.n_heads)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """q_pos (B, T), k_pos (B, S) int64 -> additive bias (B, H, T, S) in the table's dtype."""
        distance = k_pos[:, None, :] - q_pos[:, :, None]  # (B, T, S)
        bucket = relative_bucket(distance, self.bidirectional, self.n_buckets, self.max_distance)
        return self.embed(bucket).permute(0, 3, 1, 2)
