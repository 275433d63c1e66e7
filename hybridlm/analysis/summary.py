"""One model's predicted costs at a context length: what `hybridlm analyze` prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config import ModelConfig
from .flops import flops_per_token_prefill, forward_flops
from .memory import cache_bytes, cache_bytes_per_token, dtype_bytes, parameter_count


@dataclass
class ModelAnalysis:
    """Predicted parameters, bytes and FLOPs of one config at `context` tokens x `batch` rows."""

    context: int  # tokens per sequence the figures below are for
    batch: int  # sequences
    dtype: str  # weights and KV cache (the SSM state is float32 at least)
    params_total: int
    params_active: int  # per token (MoE: k of n experts)
    weight_bytes: int  # params_total x bytes per element
    flops_per_token_prefill: float  # mean over a forward of `context` tokens from empty, logits everywhere,
    #   attention over the whole query x key rectangle as the kernels here compute it
    flops_per_token_prefill_causal: float  # the same with attention over visible keys only
    flops_per_token_decode: int  # one token after `context` tokens
    cache_bytes_per_token: int  # K and V one token adds, one sequence, all attention layers
    mamba_state_bytes: int  # conv + SSM state of one sequence, all Mamba layers, at any length
    cache_bytes_at_context: int  # whole cache at `context` tokens x `batch` sequences
    decode_bytes_per_step: int  # weights and cache read by one decode step of the batch (a lower
    #   bound: embedding rows aside, every active weight and every cached byte is read once)
    layer_pattern: str
    kv_dtype: str  # "float": K/V in `dtype`; "int8": int8 with a float32 scale per head and token
    kv_bytes_per_token_in_dtype: int  # cache_bytes_per_token if K/V were kept in `dtype` (the saving's base)
    attention_layers: int
    mamba_layers: int
    params_by_kind: dict[str, int]
    flops_prefill_terms: dict[str, float]  # per token, by term (analysis/flops.py)
    flops_decode_terms: dict[str, int]

    def as_dict(self) -> dict:
        return asdict(self)


def analyze(cfg: ModelConfig, context: int | None = None, batch: int = 1, dtype: str = "bfloat16",
            kv_dtype: str = "float") -> ModelAnalysis:
    """Predicted costs of `cfg` at `context` tokens (default: its max_seq_len) x `batch` sequences,
    weights and cache in `dtype` (K/V in int8 with kv_dtype="int8")."""
    context = cfg.max_seq_len if context is None else context
    if context < 1 or batch < 1:
        raise ValueError(f"context and batch must be at least 1 (got {context} and {batch})")
    nbytes = dtype_bytes(dtype)
    params = parameter_count(cfg)
    prefill = forward_flops(cfg, context)
    decode = forward_flops(cfg, 1, context, decode=True)
    cache = cache_bytes(cfg, context, batch, nbytes, kv_dtype)
    # decode gathers one embedding row; an untied table is otherwise not read
    unread = 0 if cfg.tie_embeddings else params.by_kind["embedding"]
    return ModelAnalysis(
        context=context, batch=batch, dtype=dtype, params_total=params.total, params_active=params.active,
        weight_bytes=params.total * nbytes, flops_per_token_prefill=prefill.total / context,
        flops_per_token_prefill_causal=flops_per_token_prefill(cfg, context, causal=True),
        flops_per_token_decode=decode.total, cache_bytes_per_token=cache_bytes_per_token(cfg, nbytes, kv_dtype),
        mamba_state_bytes=cfg.mamba_state_bytes(nbytes), cache_bytes_at_context=cache,
        decode_bytes_per_step=(params.active - unread) * nbytes + cache, layer_pattern=cfg.pattern, kv_dtype=kv_dtype,
        kv_bytes_per_token_in_dtype=cache_bytes_per_token(cfg, nbytes),
        attention_layers=cfg.n_attention_layers, mamba_layers=cfg.n_mamba_layers, params_by_kind=params.by_kind,
        flops_prefill_terms={k: v / context for k, v in prefill.terms.items()}, flops_decode_terms=decode.terms)


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} B"


def _count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _kv_note(a: ModelAnalysis) -> str:
    """How a float16 or int8 KV cache compares with one in the run dtype."""
    ratio = a.cache_bytes_per_token / max(a.kv_bytes_per_token_in_dtype, 1)
    what = "float16" if a.kv_dtype == "float16" else "int8 + a float32 scale per head and token"
    return f"{what}: {ratio:.1%} of {a.dtype}"


def format_analysis(name: str, a: ModelAnalysis) -> str:
    """The human-readable report of `hybridlm analyze`."""
    n_blocks = len(a.layer_pattern)
    attn_share = a.flops_prefill_terms["attention"] / a.flops_per_token_prefill
    lines = [
        f"model             {name}",
        f"layer pattern     {a.layer_pattern}",
        f"                  {n_blocks} blocks: {a.attention_layers} attention, {a.mamba_layers} Mamba-2, "
        f"{a.layer_pattern.count('-')} MLP, {a.layer_pattern.count('E')} MoE",
        f"parameters        {a.params_total:,} ({_count(a.params_total)})"
        + (f", active per token {a.params_active:,} ({_count(a.params_active)})"
           if a.params_active != a.params_total else ""),
        f"weights           {_size(a.weight_bytes)} in {a.dtype}",
        f"FLOPs per token   prefill {a.flops_per_token_prefill:.3e} (mean over {a.context:,} tokens; "
        f"attention {attn_share:.0%}; {a.flops_per_token_prefill_causal:.3e} counting only unmasked keys)",
        f"                  decode  {a.flops_per_token_decode:.3e} (at context {a.context:,})",
        f"KV cache          {_size(a.cache_bytes_per_token)} per token per sequence "
        f"({a.attention_layers} attention layers{', ' + _kv_note(a) if a.kv_dtype != 'float' else ''})",
    ]
    if a.mamba_layers:
        lines.append(f"Mamba state       {_size(a.mamba_state_bytes)} per sequence at any length "
                     f"({a.mamba_layers} layers)")
    lines.append(f"cache             {_size(a.cache_bytes_at_context)} at {a.context:,} tokens x batch {a.batch}")
    lines.append(f"decode step reads {_size(a.decode_bytes_per_step)} (weights + cache)")
    return "\n".join(lines)
