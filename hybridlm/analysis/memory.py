"""Parameter counts and memory (weights, KV cache) predicted from a `ModelConfig`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ModelConfig


def count_parameters(cfg: ModelConfig) -> int:
    """Parameters of the model `cfg` builds (tied matrices counted once), from the real module
    built on the meta device, so it can never disagree with the model."""
    from ..models.decoder import Decoder  # analysis reads configs; the module is the ground truth

    with torch.device("meta"):
        model = Decoder(cfg)
    return sum(p.numel() for p in model.parameters())


@dataclass
class MemorySummary:
    params: int  # parameters, tied matrices once
    weight_bytes: int  # params x bytes per element of the run dtype
    kv_bytes_per_token: int  # K and V of one token over all attention layers
    kv_bytes_at_context: int  # at max_seq_len, batch 1


def memory_summary(cfg: ModelConfig, bytes_per_element: int = 4) -> MemorySummary:
    params = count_parameters(cfg)
    per_token = cfg.kv_cache_bytes_per_token(bytes_per_element)
    return MemorySummary(params, params * bytes_per_element, per_token, per_token * cfg.max_seq_len)
