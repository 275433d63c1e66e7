"""The PaLM-E / LLaVA projector: visual features -> vectors in the LM's token embedding space.

linear: one matrix (LLaVA 1.0, PaLM-E's affine map); mlp: Linear -> GELU -> Linear (LLaVA-1.5).
"""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    def __init__(self, kind: str, d_in: int, d_out: int):
        super().__init__()
        if kind == "linear":
            self.net = nn.Linear(d_in, d_out)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))
        else:
            raise ValueError(f"projector must be 'linear' or 'mlp', not {kind!r}")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., d_out)."""
        return self.net(features)
