"""FLOPs of a forward predicted from a `ModelConfig`, term by term, as hybridlm's forward runs it.

What is counted (2 FLOPs per multiply-add, the convention of torch.utils.flop_counter, PaLM's MFU
and Kaplan et al.): every matrix product and convolution. That is
  - every linear layer: 2 x in x out per token (biases, embeddings lookups: free);
  - attention scores and their use, QK^T and PV: 4 x D per query, key and head, over the whole
    rectangle of queries x keys the kernel computes: a causal prefill of T tokens counts T x T
    keys, masked half included, as the reference path computes them and as torch's flop counter
    counts its CUDA SDPA kernels (PaLM's MFU counts the same; `causal_attention_flops` gives the
    visible half that a kernel skipping masked blocks computes);
  - the Mamba-2 depthwise causal conv: 2 x d_conv per channel and token;
  - the SSD scan as nn/ssd.py runs it: in prefill the chunked form's four matrix products per
    chunk of L tokens (C B^T per group, the masked L x L mix per head, the state read-in and the
    state update per head); in decode the recurrence's elementwise update of the (P, N) state
    per head (5 P N: decay, outer product, add, read-out multiply and sum);
  - MoE: the router over all experts and only the k chosen experts per token (no capacity drop).
Left out, as flop counters leave them out: norms, activations, softmax, RoPE, the SSD decays,
gating: O(width) per token, small beside the matmuls' O(width^2). In decode the conv and the SSD step are
elementwise tensor ops, so `FlopCount.elementwise` names them: a flop counter that sees only
matrix products and convolutions does not see them (tests/analysis/test_flops.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ModelConfig


@dataclass
class FlopCount:
    """FLOPs of one forward (all batch rows), by term."""

    terms: dict[str, int]  # 'linear', 'attention', 'conv', 'ssd', 'lm_head'
    elementwise: frozenset[str] = field(default_factory=frozenset)  # terms run as elementwise ops

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    @property
    def matmul(self) -> int:
        """The terms computed by matrix products and convolutions (what a flop counter sees)."""
        return sum(v for k, v in self.terms.items() if k not in self.elementwise)


def _mlp_flops_per_token(cfg: ModelConfig, d_ff: int) -> int:
    """Up (gate and up for a GLU) and down projections of hidden width d_ff; 0 for d_ff 0."""
    width = 2 * d_ff if cfg.mlp.endswith("glu") else d_ff
    return 2 * cfg.d_model * (width + d_ff)


def _linear_flops_per_token(cfg: ModelConfig) -> int:
    """Matmul FLOPs of every block's linear layers for one token (MoE: router + k experts)."""
    d = cfg.d_model
    attention = 2 * d * (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim + 2 * cfg.n_heads * cfg.head_dim * d
    mlp = _mlp_flops_per_token(cfg, cfg.d_ff)
    shared = _mlp_flops_per_token(cfg, cfg.moe_shared_expert_d_ff)
    moe = 2 * d * cfg.n_experts + cfg.n_experts_per_token * _mlp_flops_per_token(cfg, cfg.moe_d_ff) + shared
    inner = cfg.mamba_d_inner
    mamba = 2 * d * (inner + cfg.mamba_conv_dim + cfg.mamba_n_heads) + 2 * inner * d
    per_kind = {"attention": attention, "mlp": mlp, "moe": moe, "mamba": mamba}
    return sum(per_kind[kind] for kind in cfg.blocks)


def attention_keys(cfg: ModelConfig, n_new: int, context: int, decode: bool) -> int:
    """Keys each of n_new queries is scored against after `context` cached tokens.

    Without a window: every token so far. With a window W, decode sees the last W tokens; a
    prefill scores its T queries against the ring's W - 1 slots plus the T new keys (the window
    cut is a mask, so the masked keys are computed, as for causality).
    """
    keys = context + n_new
    if cfg.sliding_window is None:
        return keys
    if decode:
        return min(keys, cfg.sliding_window)
    return min(keys, cfg.sliding_window - 1 + n_new)


def _chunk_lengths(n_tokens: int, chunk: int) -> list[int]:
    return [min(chunk, n_tokens - start) for start in range(0, n_tokens, chunk)]


def ssd_chunked_flops(cfg: ModelConfig, n_tokens: int) -> int:
    """Matmul FLOPs of `ssd_scan_chunked` over n_tokens for one sequence and one Mamba layer.

    Per chunk of l tokens, G groups, H heads of P channels, state N (nn/ssd.py, Dao & Gu Sec. 6):
    C B^T (G l^2 N MACs), the masked mix times x (H l^2 P), the entering state read out by C
    (H l N P) and the leaving state B^T x (H l N P).
    """
    g, h, p, n = cfg.mamba_n_groups, cfg.mamba_n_heads, cfg.mamba_head_dim, cfg.d_state
    return sum(2 * l * l * (g * n + h * p) + 4 * h * l * n * p
               for l in _chunk_lengths(n_tokens, cfg.mamba_chunk_size))


def ssd_step_flops(cfg: ModelConfig) -> int:
    """FLOPs of one token of `ssd_step` for one Mamba layer: decay the (P, N) state, add the outer
    product dt x B^T, multiply by C and sum over N, per head: 5 P N."""
    return 5 * cfg.mamba_n_heads * cfg.mamba_head_dim * cfg.d_state


def forward_flops(cfg: ModelConfig, n_new: int, context: int = 0, batch: int = 1, *,
                  decode: bool = False, last_only: bool = False) -> FlopCount:
    """FLOPs of one forward of `n_new` tokens per row over `context` cached tokens, `batch` rows.

    decode: a one-token step from the cache (Mamba layers run the recurrence step, not the chunked
        scan; the Decoder does this for any single-token forward with a cache).
    last_only: the LM head runs on the last position only, as generation's prefill does.
    """
    if decode and n_new != 1:
        raise ValueError("a decode step forwards one token")
    n_attn, n_mamba = cfg.n_attention_layers, cfg.n_mamba_layers
    keys = attention_keys(cfg, n_new, context, decode)
    terms = {
        "linear": n_new * _linear_flops_per_token(cfg),
        "attention": n_attn * 4 * n_new * keys * cfg.n_heads * cfg.head_dim,
        "conv": n_mamba * n_new * 2 * cfg.mamba_conv_dim * cfg.d_conv,
        "ssd": n_mamba * (ssd_step_flops(cfg) if decode else ssd_chunked_flops(cfg, n_new)),
        "lm_head": (1 if last_only else n_new) * 2 * cfg.d_model * cfg.vocab_size,
    }
    terms = {k: batch * v for k, v in terms.items()}
    return FlopCount(terms, frozenset({"conv", "ssd"}) if decode else frozenset())


def causal_attention_flops(cfg: ModelConfig, n_new: int, context: int = 0) -> int:
    """Attention FLOPs of a prefill counting only the keys each query may see (causal, windowed):
    what a kernel that skips masked blocks (flash attention's is_causal) must compute; about half
    the rectangle `forward_flops` counts for a prefill from empty."""
    w = cfg.sliding_window
    seen = sum(context + i if w is None else min(context + i, w) for i in range(1, n_new + 1))
    return cfg.n_attention_layers * 4 * seen * cfg.n_heads * cfg.head_dim


def flops_per_token_prefill(cfg: ModelConfig, context: int, causal: bool = False) -> float:
    """Mean FLOPs per token of one forward over `context` tokens from an empty cache, logits at
    every position (the training forward; generation's prefill saves the LM head on all but one).
    causal: count attention over the visible keys only (`causal_attention_flops`)."""
    count = forward_flops(cfg, context)
    if causal:
        count.terms["attention"] = causal_attention_flops(cfg, context)
    return count.total / context


def flops_per_token_decode(cfg: ModelConfig, context: int) -> int:
    """FLOPs of decoding one token after `context` tokens: it attends over context + 1 keys."""
    return forward_flops(cfg, 1, context, decode=True).total
