"""Flamingo's Perceiver Resampler (Alayrac et al. 2022, section 2.1 and appendix A.1.1).

A fixed number of learned latent queries cross-attend to the image's patch features concatenated
with the latents themselves, then pass an MLP; after the last layer the n_latents outputs are the
image's visual tokens, whatever the number of patches. The attention is nn/cross_attention.py's.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..nn.cross_attention import CrossAttention
from ..nn.mlp import MLP
from ..nn.norms import make_norm


class ResamplerLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_media, self.norm_latents, self.norm_ff = make_norm(cfg), make_norm(cfg), make_norm(cfg)
        self.attn = CrossAttention(cfg)
        self.ff = MLP(cfg)

    def forward(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """latents (N, L, d), features (N, P, d) -> latents (N, L, d)."""
        q = self.norm_latents(latents)
        kv = self.attn.project_memory(torch.cat((self.norm_media(features), q), dim=1))  # keys: [patches; latents]
        latents = latents + self.attn(q, kv, None)
        return latents + self.ff(self.norm_ff(latents))


class PerceiverResampler(nn.Module):
    """(N, P, d_vision) patch features -> (N, n_latents, d_out) visual tokens."""

    def __init__(self, cfg: ModelConfig, n_latents: int, n_layers: int, d_out: int):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(n_latents, cfg.d_model) * 0.02)
        self.layers = nn.ModuleList(ResamplerLayer(cfg) for _ in range(n_layers))
        self.norm = make_norm(cfg)
        self.out = nn.Linear(cfg.d_model, d_out)  # into the LM's width, where the cross-attention reads it

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(features.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(latents, features)
        return self.out(self.norm(latents))
