"""Multi-head self-attention with MHA/GQA/MQA, RoPE or ALiBi, QK-norm, sliding windows and caches.

Two implementations of the attention math, chosen by `ModelConfig.attn_impl`:
  - `attention_ref`: softmax(Q K^T / sqrt(D) + bias) V written out (Vaswani et al. 2017, eq. 1);
  - `attention_sdpa`: torch's scaled_dot_product_attention (flash / memory-efficient kernels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..kernels import triton_support
from .norms import RMSNorm
from .positions import apply_rope


@dataclass
class AttentionInputs:
    """What every attention layer of one forward shares, computed once at the top of the model.

    mask: None, a bool tensor (B, 1, T, S) where True = may attend, or an additive float tensor
        (B, H, T, S) when ALiBi biases are folded in.
    is_causal: the mask is plain causal over T == S keys (lets SDPA skip materialising it).
    cos, sin: RoPE tables (B, T, 1, D) from `rope_cos_sin`, or None for other position schemes.
    attend: None, or an attention function that replaces the layer's own for this forward (the
        serving engine's paged attention, which reads the block pools its cache slots return).
    window: when not None, `mask` is exactly the causal mask cut to this sliding window, with no
        padding and keys == queries, so a kernel may rebuild it from indices (flash attention).
    segments: None, or (B, T) ids of packed examples; the mask already keeps attention inside each,
        and Mamba mixers (which share these inputs through the block) run each example alone.
    """

    mask: torch.Tensor | None
    is_causal: bool
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    attend: Callable | None = None
    window: int | None = None
    segments: torch.Tensor | None = None


def allowed_keys(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None,
                 segments: torch.Tensor | None = None) -> torch.Tensor:
    """Which keys each query may see. q_pos (B, T), k_pos (B, S); -1 marks padding or empty slots.

    A query sees a key at or before its own position and, with a window W, fewer than W back.
    segments (B, T), cache-free forwards only (S == T): also only keys of its own packed example
    (the block-diagonal mask of packed training). Padding queries see every slot so their
    (discarded) softmax stays finite. -> bool (B, 1, T, S)
    """
    q, k = q_pos[:, :, None], k_pos[:, None, :]
    ok = (k >= 0) & (k <= q)
    if window is not None:
        ok &= (q - k) < window
    if segments is not None:
        ok &= segments[:, :, None] == segments[:, None, :]
    ok |= (q < 0)
    return ok[:, None]


def alibi_bias(allowed: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """Additive mask with ALiBi's -m_h * (i - j) penalty. -> float32 (B, H, T, S)"""
    dist = (q_pos[:, :, None] - k_pos[:, None, :]).float()  # (B, T, S)
    bias = -slopes.to(dist.device)[None, :, None, None] * dist[:, None]
    return bias.masked_fill(~allowed, float("-inf"))


def _expand_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, H_kv, S, D) -> (B, H_kv * n_rep, S, D): query head h reads KV head h // n_rep."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def attention_ref(q, k, v, mask: torch.Tensor | None, is_causal: bool, dropout_p: float = 0.0) -> torch.Tensor:
    """Explicit softmax(Q K^T / sqrt(D) + M) V in float32. q (B, H, T, D), k/v (B, H_kv, S, D)."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = _expand_kv(k, n_rep).float(), _expand_kv(v, n_rep).float()
    scores = q.float() @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if is_causal:
        t, s = scores.shape[-2:]
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return (probs @ v).to(q.dtype)


def attention_sdpa(q, k, v, mask: torch.Tensor | None, is_causal: bool, dropout_p: float = 0.0) -> torch.Tensor:
    """The same math through F.scaled_dot_product_attention."""
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                          dropout_p=dropout_p, enable_gqa=gqa)


ATTENTION_IMPLS = {"ref": attention_ref, "sdpa": attention_sdpa}


def flash_plan(q: torch.Tensor, k: torch.Tensor, inputs: AttentionInputs, dropout_p: float) -> tuple[bool, int] | None:
    """(causal, window) when the Triton flash attention (kernels/flash_attn.py) can replace SDPA for
    this call, else None: CUDA with the [triton] extra, no dropout, more than one query (decode
    stays on SDPA), a supported head dim, and a mask it can rebuild from indices."""
    if dropout_p or q.shape[2] == 1 or not triton_support.use_triton(q) or q.shape[-1] not in (16, 32, 64, 128):
        return None
    if inputs.mask is None:
        return inputs.is_causal, 0
    if inputs.window is not None and q.shape[2] == k.shape[2]:
        return True, inputs.window
    return None


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_width = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        # one matmul for q, k and v: rows [q heads; k heads; v heads]
        self.wqkv = nn.Linear(cfg.d_model, qkv_width, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=cfg.attn_out_bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.attend = ATTENTION_IMPLS[cfg.attn_impl]
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, slot=None) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model). `slot` (a cache slot) is appended to in place."""
        b, t, _ = x.shape
        h, h_kv, d = self.n_heads, self.n_kv_heads, self.head_dim
        qk, v = self.wqkv(x).view(b, t, h + 2 * h_kv, d).split((h + h_kv, h_kv), dim=2)  # (B, T, H*, D)
        if self.q_norm is not None:  # Qwen3 normalises each head before RoPE
            qk = torch.cat((self.q_norm(qk[:, :, :h]), self.k_norm(qk[:, :, h:])), dim=2)
        if inputs.cos is not None and not d & (d - 1) and triton_support.use_triton(qk):  # one fused pass on CUDA
            from ..kernels.fused_ops import rope_triton

            qk = rope_triton(qk, inputs.cos, inputs.sin)
        elif inputs.cos is not None:  # q and k rotate as one tensor: half the small ops of a decode step
            qk = apply_rope(qk, inputs.cos, inputs.sin)
        q, k = qk.split((h, h_kv), dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if slot is not None:
            k, v = slot.update(k, v)  # (B, H_kv, S, D): everything this step attends over
        p = self.dropout if self.training else 0.0
        attend = self.attend if inputs.attend is None else inputs.attend
        plan = flash_plan(q, k, inputs, p) if attend is attention_sdpa else None
        if plan is not None:  # CUDA training and prefill: the Triton flash kernel
            from ..kernels.flash_attn import flash_attn

            o = flash_attn(q, k, v, causal=plan[0], window=plan[1] or None)
        else:
            o = attend(q, k, v, inputs.mask, inputs.is_causal, p)  # (B, H, T, D)
        return self.wo(o.transpose(1, 2).reshape(b, t, h * d))
