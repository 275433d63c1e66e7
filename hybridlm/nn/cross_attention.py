"""Cross-attention (Vaswani et al. 2017, section 3.2.3): decoder queries over the encoder output.

The keys and values depend only on the encoder output, so they are projected once per source
(`project_memory`) and reused at every decoding step; only the queries are computed per step. The
math is nn/attention.py's `attention_ref` / `attention_sdpa`, chosen by `ModelConfig.attn_impl`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .attention import ATTENTION_IMPLS


class CrossAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        # rows [k heads; v heads], as the self-attention's fused projection orders them
        self.wkv = nn.Linear(cfg.d_model, 2 * cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=cfg.attn_out_bias)
        self.attend = ATTENTION_IMPLS[cfg.attn_impl]
        self.dropout = cfg.dropout

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B, S, d_model) -> k, v (B, H_kv, S, D)."""
        b, s, _ = memory.shape
        kv = self.wkv(memory).view(b, s, 2 * self.n_kv_heads, self.head_dim).transpose(1, 2)
        return kv.split(self.n_kv_heads, dim=1)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, T, d_model), kv from `project_memory`, mask None or bool (B, 1, 1, S) with
        True = a real source token -> (B, T, d_model)."""
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        p = self.dropout if self.training else 0.0
        o = self.attend(q, kv[0], kv[1], mask, False, p)  # (B, H, T, D)
        return self.wo(o.transpose(1, 2).reshape(b, t, -1))
