"""Parameters and memory (weights, KV cache, Mamba state) predicted from a `ModelConfig`.

Everything here is arithmetic on the config; tests/analysis/test_memory.py holds it against the
real module's parameters and the real cache tensors after a prefill.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import ModelConfig

# bytes per element of the dtypes a model or a cache may be stored in
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "float8": 1, "int8": 1}


def dtype_bytes(dtype: str | torch.dtype) -> int:
    """Bytes per element of a dtype name ('bfloat16') or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def count_parameters(cfg: ModelConfig) -> int:
    """Parameters of the model `cfg` builds (tied matrices counted once), from the real module
    built on the meta device: the measurement `parameter_count` is tested against."""
    from ..models.decoder import Decoder  # analysis reads configs; the module is the ground truth

    with torch.device("meta"):
        model = Decoder(cfg)
    return sum(p.numel() for p in model.parameters())


# -- parameters by formula -------------------------------------------------------------------------

def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def norm_parameters(cfg: ModelConfig, dim: int | None = None) -> int:
    """RMSNorm has a weight; LayerNorm a weight and a bias."""
    dim = dim or cfg.d_model
    return dim if cfg.norm == "rmsnorm" else 2 * dim


def attention_parameters(cfg: ModelConfig) -> int:
    """Fused q/k/v projection, output projection and the optional per-head QK-norms."""
    qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
    qk_norm = 2 * cfg.head_dim if cfg.qk_norm else 0
    return (_linear(cfg.d_model, qkv, cfg.qkv_bias) + _linear(cfg.n_heads * cfg.head_dim, cfg.d_model,
                                                               cfg.attn_out_bias) + qk_norm)


def mlp_parameters(cfg: ModelConfig, d_ff: int | None = None) -> int:
    """An MLP (up, down) or a GLU (gate and up fused, down) of hidden width d_ff (default cfg.d_ff)."""
    d_ff = d_ff or cfg.d_ff
    width = 2 * d_ff if cfg.mlp.endswith("glu") else d_ff
    return _linear(cfg.d_model, width, cfg.mlp_bias) + _linear(d_ff, cfg.d_model, cfg.mlp_bias)


def moe_parameters(cfg: ModelConfig, experts: int | None = None) -> int:
    """Router, `experts` routed experts (default all of them) and the shared expert, if any."""
    experts = cfg.n_experts if experts is None else experts
    shared = mlp_parameters(cfg, cfg.moe_shared_expert_d_ff) if cfg.moe_shared_expert_d_ff else 0
    return cfg.d_model * cfg.n_experts + experts * mlp_parameters(cfg, cfg.moe_d_ff) + shared


def mamba_parameters(cfg: ModelConfig) -> int:
    """in_proj (to z, xBC, dt), depthwise conv, dt_bias, A_log, D, the gated norm and out_proj."""
    h, inner, conv = cfg.mamba_n_heads, cfg.mamba_d_inner, cfg.mamba_conv_dim
    in_proj = _linear(cfg.d_model, inner + conv + h, cfg.mamba_proj_bias)
    conv1d = conv * cfg.d_conv + (conv if cfg.mamba_conv_bias else 0)
    return in_proj + conv1d + 3 * h + inner + _linear(inner, cfg.d_model, cfg.mamba_proj_bias)


def block_parameters(cfg: ModelConfig, kind: str, active: bool = False) -> int:
    """One residual block of `kind` with its norm; `active`: only the k routed experts of an MoE."""
    mixer = {
        "attention": attention_parameters,
        "mlp": mlp_parameters,
        "mamba": mamba_parameters,
        "moe": lambda c: moe_parameters(c, c.n_experts_per_token if active else None),
    }[kind](cfg)
    return mixer + norm_parameters(cfg)


@dataclass
class ParameterCount:
    total: int  # every parameter, tied matrices once
    active: int  # used per token: an MoE block counts its router, k routed experts and shared expert
    by_kind: dict[str, int] = field(default_factory=dict)  # total per block kind, plus 'embedding',
    #   'lm_head' (0 when tied) and 'final_norm'


def parameter_count(cfg: ModelConfig) -> ParameterCount:
    """Parameters predicted from the config alone (no module is built)."""
    by_kind = {"embedding": cfg.vocab_size * cfg.d_model
               + (cfg.max_seq_len * cfg.d_model if cfg.position == "learned" else 0)}
    for kind in sorted(set(cfg.blocks)):
        by_kind[kind] = cfg.blocks.count(kind) * block_parameters(cfg, kind)
    by_kind["final_norm"] = norm_parameters(cfg) if cfg.norm_position == "pre" else 0
    by_kind["lm_head"] = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model
    total = sum(by_kind.values())
    n_moe = cfg.blocks.count("moe")
    inactive = n_moe * (block_parameters(cfg, "moe") - block_parameters(cfg, "moe", active=True))
    return ParameterCount(total, total - inactive, by_kind)


# -- cache -----------------------------------------------------------------------------------------

def kv_tokens_held(cfg: ModelConfig, context: int) -> int:
    """Tokens whose K and V one attention layer keeps at `context`: all of them, or with a sliding
    window of W the last W - 1 (the next token's own K/V makes the W it attends over; cache.py)."""
    if cfg.sliding_window is None:
        return context
    return min(context, cfg.sliding_window - 1)


KV_DTYPES = ("float", "float16", "int8")  # float: the model's dtype; float16: 2 bytes; int8: kv_quant.py
KV_INT8_SCALE_BYTES = 4  # one float32 scale per head and token for K, and one for V (kv_quant.SCALE_DTYPE)


def cache_bytes_per_token(cfg: ModelConfig, bytes_per_element: int = 4, kv_dtype: str = "float") -> int:
    """Bytes one more token of one sequence adds: K and V over every attention layer.
    kv_dtype "float16": two bytes per element; "int8": one plus a float32 scale per head (kv_quant.py)."""
    if kv_dtype == "float":
        return cfg.kv_cache_bytes_per_token(bytes_per_element)
    if kv_dtype == "float16":
        return cfg.kv_cache_bytes_per_token(2)
    if kv_dtype != "int8":
        raise ValueError(f"KV cache dtype must be one of {KV_DTYPES}, not {kv_dtype!r}")
    return 2 * cfg.n_attention_layers * cfg.n_kv_heads * (cfg.head_dim + KV_INT8_SCALE_BYTES)


def cache_bytes(cfg: ModelConfig, context: int, batch: int = 1, bytes_per_element: int = 4,
                kv_dtype: str = "float") -> int:
    """Bytes of the cache after `context` tokens of `batch` sequences: the KV of attention layers
    (a ring of W - 1 tokens under a sliding window) plus the constant conv + SSM state of Mamba
    layers (the SSM state in float32 at least, as cache.MambaSlot keeps it).

    This is what a cache sized for exactly `context` tokens holds (a static cache of max_len =
    context); a dynamic cache allocates up to 2x ahead (it grows by doubling).
    """
    kv = kv_tokens_held(cfg, context) * cache_bytes_per_token(cfg, bytes_per_element, kv_dtype)
    return batch * (kv + cfg.mamba_state_bytes(bytes_per_element))


# -- the summary `hybridlm info` prints ------------------------------------------------------------

@dataclass
class MemorySummary:
    params: int  # parameters, tied matrices once
    weight_bytes: int  # params x bytes per element of the run dtype
    kv_bytes_per_token: int  # K and V of one token over all attention layers
    kv_bytes_at_context: int  # at max_seq_len, batch 1


def memory_summary(cfg: ModelConfig, bytes_per_element: int = 4, kv_dtype: str = "float") -> MemorySummary:
    params = parameter_count(cfg).total
    per_token = cache_bytes_per_token(cfg, bytes_per_element, kv_dtype)
    return MemorySummary(params, params * bytes_per_element, per_token,
                         per_token * kv_tokens_held(cfg, cfg.max_seq_len))
