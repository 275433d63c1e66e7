"""HF `transformers` checkpoints in and out: `config.json` + safetensors, one key map per architecture.

This is the only module that knows HF key and config names (ARCHITECTURE.md: state dicts are ours,
formats are translated at the border). A dense HF layer i is our block 2i (attention, its norm is
`input_layernorm` / `ln_1`) and our block 2i + 1 (MLP, its norm is `post_attention_layernorm` /
`ln_2`). Several HF tensors may make one of ours: q/k/v become the fused `wqkv` (rows
[q heads; k heads; v heads]) and gate/up the fused GLU `w_in` (rows [gate; up]). A Mixtral layer i is
our attention block 2i and our MoE block 2i + 1, each expert's w1/w3 (gate/up) fused the same way.
The Mamba-2 families (Mamba2ForCausalLM, NemotronHForCausalLM) map one HF layer to one block; their
names live in hf_hybrid.py, which the functions here dispatch to.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import ConfigError, ModelConfig
from ..models.decoder import Decoder
from . import hf_hybrid
from .atomic import atomic_dir
from .errors import CheckpointError
from .hf_rules import check_against, few

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "mixtral") + hf_hybrid.ARCHS  # hybrids: hf_hybrid.py
_HF_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
               "qwen3": "Qwen3ForCausalLM", "gpt2": "GPT2LMHeadModel", "mixtral": "MixtralForCausalLM"}
_HF_CLASSES.update(hf_hybrid.HF_CLASSES)


# ---------------------------------------------------------------- key maps (one per architecture)

@dataclass(frozen=True)
class Rule:
    """One of our tensors and the HF tensors it is made of, concatenated along dim 0 when several."""

    ours: str  # our key, relative to the block for layer rules
    hf: tuple[str, ...]  # HF keys, relative to the HF layer for layer rules
    transpose: bool = False  # GPT-2's Conv1D stores weights as (in, out)


@dataclass(frozen=True)
class KeyMap:
    prefix: str  # the base model's prefix; checkpoints of the bare base model lack it
    layer: str  # prefix of HF layer i, formatted with i
    globals: tuple[Rule, ...]  # full HF names
    attention: tuple[Rule, ...]  # our block 2i
    mlp: tuple[Rule, ...]  # our block 2i + 1; '{e}' in a rule is each expert's index
    ignored: tuple[str, ...]  # suffixes of derived buffers some versions saved (rotary tables, masks)
    pattern: str = "*-"  # our two blocks per HF layer


def _qkv(prefix: str, kind: str) -> tuple[str, ...]:
    return tuple(f"{prefix}.{p}_proj.{kind}" for p in "qkv")


# LlamaForCausalLM; MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM use the same names
_LLAMA_KEYS = KeyMap(
    prefix="model.",
    layer="model.layers.{i}.",
    globals=(Rule("embed.weight", ("model.embed_tokens.weight",)),
             Rule("final_norm.weight", ("model.norm.weight",)),
             Rule("lm_head.weight", ("lm_head.weight",))),
    attention=(Rule("norm.weight", ("input_layernorm.weight",)),
               Rule("mixer.wqkv.weight", _qkv("self_attn", "weight")),
               Rule("mixer.wqkv.bias", _qkv("self_attn", "bias")),
               Rule("mixer.wo.weight", ("self_attn.o_proj.weight",)),
               Rule("mixer.wo.bias", ("self_attn.o_proj.bias",)),
               Rule("mixer.q_norm.weight", ("self_attn.q_norm.weight",)),
               Rule("mixer.k_norm.weight", ("self_attn.k_norm.weight",))),
    mlp=(Rule("norm.weight", ("post_attention_layernorm.weight",)),
         Rule("mixer.w_in.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
         Rule("mixer.w_in.bias", ("mlp.gate_proj.bias", "mlp.up_proj.bias")),
         Rule("mixer.w_out.weight", ("mlp.down_proj.weight",)),
         Rule("mixer.w_out.bias", ("mlp.down_proj.bias",))),
    ignored=("rotary_emb.inv_freq",),
)

# GPT2LMHeadModel: c_attn is already the fused [q; k; v]
_GPT2_KEYS = KeyMap(
    prefix="transformer.",
    layer="transformer.h.{i}.",
    globals=(Rule("embed.weight", ("transformer.wte.weight",)),
             Rule("pos_embed.weight", ("transformer.wpe.weight",)),
             Rule("final_norm.weight", ("transformer.ln_f.weight",)),
             Rule("final_norm.bias", ("transformer.ln_f.bias",)),
             Rule("lm_head.weight", ("lm_head.weight",))),
    attention=(Rule("norm.weight", ("ln_1.weight",)),
               Rule("norm.bias", ("ln_1.bias",)),
               Rule("mixer.wqkv.weight", ("attn.c_attn.weight",), transpose=True),
               Rule("mixer.wqkv.bias", ("attn.c_attn.bias",)),
               Rule("mixer.wo.weight", ("attn.c_proj.weight",), transpose=True),
               Rule("mixer.wo.bias", ("attn.c_proj.bias",))),
    mlp=(Rule("norm.weight", ("ln_2.weight",)),
         Rule("norm.bias", ("ln_2.bias",)),
         Rule("mixer.w_in.weight", ("mlp.c_fc.weight",), transpose=True),
         Rule("mixer.w_in.bias", ("mlp.c_fc.bias",)),
         Rule("mixer.w_out.weight", ("mlp.c_proj.weight",), transpose=True),
         Rule("mixer.w_out.bias", ("mlp.c_proj.bias",))),
    ignored=("attn.bias", "attn.masked_bias"),  # causal-mask buffers in old GPT-2 checkpoints
)

# MixtralForCausalLM as saved on disk (transformers 5 fuses the experts into 3D tensors in memory,
# `mlp.experts.gate_up_proj`, but converts back to these names in save_pretrained)
_MIXTRAL_KEYS = KeyMap(
    prefix="model.",
    layer="model.layers.{i}.",
    globals=_LLAMA_KEYS.globals,
    attention=tuple(r for r in _LLAMA_KEYS.attention if not r.ours.endswith(".bias") and "_norm" not in r.ours),
    mlp=(Rule("norm.weight", ("post_attention_layernorm.weight",)),
         Rule("mixer.router.weight", ("block_sparse_moe.gate.weight",)),
         Rule("mixer.experts.{e}.w_in.weight", ("block_sparse_moe.experts.{e}.w1.weight",
                                                "block_sparse_moe.experts.{e}.w3.weight")),
         Rule("mixer.experts.{e}.w_out.weight", ("block_sparse_moe.experts.{e}.w2.weight",))),
    ignored=("rotary_emb.inv_freq",),
    pattern="*E",
)

KEY_MAPS = {"llama": _LLAMA_KEYS, "mistral": _LLAMA_KEYS, "qwen2": _LLAMA_KEYS, "qwen3": _LLAMA_KEYS,
            "gpt2": _GPT2_KEYS, "mixtral": _MIXTRAL_KEYS}


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise CheckpointError(f"unsupported HF architecture {arch!r}; supported: {', '.join(ARCHS)}")


def _rules(cfg: ModelConfig, arch: str) -> list[Rule]:
    """Every rule with full keys on both sides, for a config of len(cfg.blocks) // 2 HF layers."""
    _check_arch(arch)
    if arch in hf_hybrid.ARCHS:  # HF layer i is our block i
        return [Rule(ours, hf) for ours, hf in hf_hybrid.rules(cfg, arch)]
    km = KEY_MAPS[arch]
    if cfg.pattern != km.pattern * (len(cfg.blocks) // 2):
        kind = "attention+MoE" if km.pattern == "*E" else "dense attention+MLP"
        raise CheckpointError(f"layer pattern {cfg.pattern!r} is not a {kind} stack "
                              f"({km.pattern!r} repeated), which HF {arch} needs")
    rules = list(km.globals)
    for i in range(len(cfg.blocks) // 2):
        hf_layer = km.layer.format(i=i)
        for j, group in ((2 * i, km.attention), (2 * i + 1, km.mlp)):
            for r in group:
                for e in range(cfg.n_experts) if "{e}" in r.ours else (None,):
                    rules.append(Rule(f"blocks.{j}.{r.ours}".format(e=e),
                                      tuple((hf_layer + h).format(e=e) for h in r.hf), r.transpose))
    return rules


def hf_linear_names(cfg: ModelConfig, arch: str) -> dict[str, tuple[str, ...]]:
    """Our linear module -> the HF module(s) it is made of, in row order (e.g. blocks.0.mixer.wqkv ->
    (model.layers.0.self_attn.q_proj, ...k_proj, ...v_proj)): where an adapter format such as PEFT's
    names the layers it adapts. Only weights whose HF tensors are not transposed (GPT-2's Conv1D is)."""
    return {r.ours.removesuffix(".weight"): tuple(h.removesuffix(".weight") for h in r.hf)
            for r in _rules(cfg, arch) if r.ours.endswith(".weight") and not r.transpose}


def _split_sizes(rule: Rule, cfg: ModelConfig) -> list[int]:
    if "wqkv" in rule.ours:
        return [cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim]
    return [cfg.moe_d_ff if ".experts." in rule.ours else cfg.d_ff] * len(rule.hf)  # GLU [gate; up]


def _with_prefix(sd: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Checkpoints of the bare base model (GPT2Model, LlamaModel) have keys without its prefix."""
    if arch in hf_hybrid.ARCHS:  # `backbone.` or `model.`, whichever the checkpoint used
        return hf_hybrid.canonical_keys(sd, arch)
    prefix = KEY_MAPS[arch].prefix
    if any(k.startswith(prefix) for k in sd):
        return sd
    return {k if k.startswith("lm_head.") else prefix + k: v for k, v in sd.items()}


def state_dict_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig, arch: str) -> dict[str, torch.Tensor]:
    """HF tensors -> our keys (pure; returns views where it can). Unexpected HF tensors are an error.

    Tensors absent from `sd` are absent from the result; `load_hf_checkpoint` reports them.
    """
    remaining = dict(_with_prefix(sd, arch))
    out = {}
    for rule in _rules(cfg, arch):
        present = [h for h in rule.hf if h in remaining]
        if not present:
            continue
        if len(present) < len(rule.hf):
            raise CheckpointError(f"checkpoint has {present} but lacks {sorted(set(rule.hf) - set(present))}")
        parts = [remaining.pop(h) for h in rule.hf]
        parts = [p.t() if rule.transpose else p for p in parts]
        try:
            out[rule.ours] = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
        except RuntimeError:
            shapes = [tuple(p.shape) for p in parts]
            raise CheckpointError(f"cannot fuse {list(rule.hf)}: incompatible shapes {shapes}") from None
    ignored = KEY_MAPS[arch].ignored if arch in KEY_MAPS else ()
    extra = sorted(k for k in remaining if not k.endswith(ignored))
    if extra:
        raise CheckpointError(f"unexpected tensors for HF {arch} with this config: {few(extra)}")
    if cfg.tie_embeddings:  # HF may store the shared matrix under either name, or both
        head = out.pop("lm_head.weight", None)
        if head is not None:
            out.setdefault("embed.weight", head)
    return out


def state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig, arch: str) -> dict[str, torch.Tensor]:
    """Our tensors -> HF keys (pure; returns views, possibly non-contiguous or sharing storage).

    A tied LM head is left out, as HF does. Keys no rule knows are an error.
    """
    remaining = dict(sd)
    out = {}
    for rule in _rules(cfg, arch):
        if rule.ours not in remaining:
            continue
        t = remaining.pop(rule.ours)
        parts = t.split(_split_sizes(rule, cfg), 0) if len(rule.hf) > 1 else (t,)
        out.update((h, p.t() if rule.transpose else p) for h, p in zip(rule.hf, parts))
    if remaining:
        raise CheckpointError(f"tensors with no HF {arch} name: {few(sorted(remaining))}")
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


# ---------------------------------------------------------------- config.json

_GLU_ACTS = {"silu": "swiglu", "swish": "swiglu", "gelu_pytorch_tanh": "geglu", "gelu_new": "geglu", "relu": "reglu"}
_GLU_ACTS_OUT = {"swiglu": "silu", "geglu": "gelu_pytorch_tanh", "reglu": "relu"}
_GPT2_ACTS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_GPT2_ACTS_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
_ROPE_TYPES = ("default", "linear", "llama3")


def detect_arch(hf: dict) -> str:
    """Our arch name from `model_type`, falling back to `architectures`."""
    if hf.get("model_type") in ARCHS:
        return hf["model_type"]
    by_class = {c: a for a, c in _HF_CLASSES.items()}
    for name in hf.get("architectures") or ():
        if name in by_class:
            return by_class[name]
    raise CheckpointError(f"unsupported HF model_type {hf.get('model_type')!r} (architectures "
                          f"{hf.get('architectures')}); supported: {', '.join(ARCHS)}")


def _req(hf: dict, key: str):
    if hf.get(key) is None:
        raise CheckpointError(f"config.json lacks {key!r}")
    return hf[key]


def _rope_from_hf(hf: dict) -> dict:
    """rope_parameters (transformers >= 5) or top-level rope_theta + rope_scaling (older)."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if any(isinstance(v, dict) for v in params.values()):
        raise CheckpointError(f"per-layer-type RoPE parameters are not supported: {sorted(params)}")
    if float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise CheckpointError("partial rotary embeddings (partial_rotary_factor != 1) are not supported")
    out = {"rope_theta": float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in _ROPE_TYPES:
        raise CheckpointError(f"RoPE scaling {kind!r} is not supported; supported: {', '.join(_ROPE_TYPES)}")
    if kind != "default":
        out.update(rope_scaling=kind, rope_factor=float(_req(params, "factor")))
    if kind == "llama3":
        out.update(rope_low_freq_factor=float(params.get("low_freq_factor", 1.0)),
                   rope_high_freq_factor=float(params.get("high_freq_factor", 4.0)),
                   rope_original_max_seq_len=int(params.get("original_max_position_embeddings",
                                                            hf.get("max_position_embeddings", 8192))))
    return out


def _rope_to_hf(cfg: ModelConfig) -> dict:
    params = {"rope_type": "default" if cfg.rope_scaling == "none" else cfg.rope_scaling, "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling != "none":
        params["factor"] = cfg.rope_factor
    if cfg.rope_scaling == "llama3":
        params.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                      original_max_position_embeddings=cfg.rope_original_max_seq_len)
    return params


def _window_from_hf(hf: dict, arch: str, n_layers: int) -> int | None:
    """Mistral and Mixtral slide on every layer; Qwen2/3 only with use_sliding_window, on the layers it names."""
    if arch in ("mistral", "mixtral"):
        return hf.get("sliding_window")
    if arch not in ("qwen2", "qwen3") or not hf.get("use_sliding_window") or hf.get("sliding_window") is None:
        return None
    first = hf.get("max_window_layers", 28)
    types = hf.get("layer_types") or ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
    if all(t == "full_attention" for t in types):
        return None
    if all(t == "sliding_attention" for t in types):
        return int(hf["sliding_window"])
    raise CheckpointError(f"a sliding window on some layers only is not supported (layer_types {types})")


def _first_id(value) -> int | None:
    # Llama 3 lists several end tokens; ModelConfig holds one, the first is the primary one
    return value[0] if isinstance(value, list) and value else (value if isinstance(value, int) else None)


def _llama_family_from_hf(hf: dict, arch: str) -> dict:
    d, n_heads, n_layers = _req(hf, "hidden_size"), _req(hf, "num_attention_heads"), _req(hf, "num_hidden_layers")
    act = hf.get("hidden_act", "silu")
    if act not in _GLU_ACTS:
        raise CheckpointError(f"hidden_act {act!r} is not supported for {arch}; supported: {', '.join(_GLU_ACTS)}")
    attn_bias = bool(hf.get("attention_bias", False))
    return dict(
        d_model=d, n_layers=n_layers, n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or d // n_heads, d_ff=_req(hf, "intermediate_size"),
        max_seq_len=hf.get("max_position_embeddings", 2048), norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
        position="rope", **_rope_from_hf(hf), mlp=_GLU_ACTS[act],
        qkv_bias=arch == "qwen2" or (arch in ("llama", "qwen3") and attn_bias),
        attn_out_bias=arch in ("llama", "qwen3") and attn_bias,
        mlp_bias=arch == "llama" and bool(hf.get("mlp_bias", False)),
        qk_norm=arch == "qwen3", sliding_window=_window_from_hf(hf, arch, n_layers),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def _gpt2_from_hf(hf: dict) -> dict:
    act = hf.get("activation_function", "gelu_new")
    if act not in _GPT2_ACTS:
        raise CheckpointError(f"activation_function {act!r} is not supported; supported: {', '.join(_GPT2_ACTS)}")
    unscaled = not hf.get("scale_attn_weights", True)
    if unscaled or hf.get("scale_attn_by_inverse_layer_idx") or hf.get("add_cross_attention"):
        raise CheckpointError("GPT-2 variants with unscaled, layer-scaled or cross attention are not supported")
    d = _req(hf, "n_embd")
    return dict(
        d_model=d, n_layers=_req(hf, "n_layer"), n_heads=_req(hf, "n_head"), d_ff=hf.get("n_inner") or 4 * d,
        max_seq_len=hf.get("n_positions") or hf.get("n_ctx") or 1024, norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), position="learned", mlp=_GPT2_ACTS[act],
        qkv_bias=True, attn_out_bias=True, mlp_bias=True, tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def _mixtral_moe_from_hf(hf: dict) -> dict:
    # Mixtral's router: softmax over all experts, top-k, renormalised; no capacity limit. Its
    # router_jitter_noise only perturbs training inputs and is not carried over.
    return dict(n_experts=_req(hf, "num_local_experts"), n_experts_per_token=_req(hf, "num_experts_per_tok"),
                moe_d_ff=_req(hf, "intermediate_size"), moe_router="softmax", moe_renormalize=True,
                moe_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)))


def config_from_hf(hf: dict) -> tuple[ModelConfig, str]:
    """A parsed HF config.json -> (our config, arch name in ARCHS)."""
    arch = detect_arch(hf)
    if arch in hf_hybrid.ARCHS:
        fields = hf_hybrid.config_fields(hf, arch)
    else:
        fields = _gpt2_from_hf(hf) if arch == "gpt2" else _llama_family_from_hf(hf, arch)
    if arch == "mixtral":
        fields.update(_mixtral_moe_from_hf(hf))
    fields.update(vocab_size=_req(hf, "vocab_size"), bos_token_id=_first_id(hf.get("bos_token_id")),
                  eos_token_id=_first_id(hf.get("eos_token_id")))
    try:
        return ModelConfig(**fields), arch
    except ConfigError as e:
        raise CheckpointError(f"HF {arch} config describes no valid model: {e}") from None


def _problems(cfg: ModelConfig, arch: str) -> list[str]:
    """Why `cfg` cannot be written as HF `arch` (empty when it can)."""
    if arch in hf_hybrid.ARCHS:
        return hf_hybrid.problems(cfg, arch)
    p = []
    if arch == "mixtral" and cfg.pattern != "*E" * (len(cfg.blocks) // 2):
        p.append(f"layer pattern {cfg.pattern!r} is not an attention+MoE stack ('*E' repeated)")
    elif arch != "mixtral" and cfg.pattern != "*-" * (len(cfg.blocks) // 2):
        p.append(f"layer pattern {cfg.pattern!r} is not a dense attention+MLP stack")
    if cfg.norm_position != "pre":
        p.append("post-norm blocks")
    if arch == "gpt2":
        want = dict(position="learned", norm="layernorm", qkv_bias=True, attn_out_bias=True, mlp_bias=True,
                    qk_norm=False, sliding_window=None, n_kv_heads=cfg.n_heads, head_dim=cfg.d_model // cfg.n_heads)
        mlps = _GPT2_ACTS_OUT
    else:
        want = dict(position="rope", norm="rmsnorm")
        want.update({"llama": dict(attn_out_bias=cfg.qkv_bias, qk_norm=False, sliding_window=None),
                     "mistral": dict(qkv_bias=False, attn_out_bias=False, mlp_bias=False, qk_norm=False),
                     "qwen2": dict(qkv_bias=True, attn_out_bias=False, mlp_bias=False, qk_norm=False),
                     "qwen3": dict(attn_out_bias=cfg.qkv_bias, mlp_bias=False, qk_norm=True),
                     "mixtral": dict(qkv_bias=False, attn_out_bias=False, mlp_bias=False, qk_norm=False,
                                     moe_router="softmax", moe_renormalize=True, moe_shared_expert_d_ff=0,
                                     moe_capacity_factor=0.0)}[arch])
        mlps = _GLU_ACTS_OUT
    p += [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in want.items() if getattr(cfg, k) != v]
    if cfg.mlp not in mlps:
        p.append(f"mlp={cfg.mlp!r} (needs one of {sorted(mlps)})")
    return p


def hf_arch_for(cfg: ModelConfig) -> str:
    """The HF architecture a config is naturally saved as; CheckpointError if none can express it."""
    if "mamba" in cfg.blocks:
        arch = hf_hybrid.arch_for(cfg)
    elif "moe" in cfg.blocks:
        arch = "mixtral"
    elif cfg.position == "learned" and cfg.norm == "layernorm":
        arch = "gpt2"
    elif cfg.qk_norm:
        arch = "qwen3"
    elif cfg.qkv_bias and not cfg.attn_out_bias:
        arch = "qwen2"
    elif cfg.sliding_window is not None:
        arch = "mistral"
    else:
        arch = "llama"
    problems = _problems(cfg, arch)
    if problems:
        raise CheckpointError(f"this config has no HF equivalent (closest: {arch}): {'; '.join(problems)}")
    return arch


def config_to_hf(cfg: ModelConfig, arch: str, dtype: torch.dtype = torch.float32) -> dict:
    """Our config -> an HF config.json dict for `arch`, as current transformers reads it."""
    _check_arch(arch)
    problems = _problems(cfg, arch)
    if problems:
        raise CheckpointError(f"cannot save this config as HF {arch}: {'; '.join(problems)}")
    n_layers = len(cfg.blocks) // 2
    out = {"architectures": [_HF_CLASSES[arch]], "model_type": arch, "dtype": str(dtype).removeprefix("torch."),
           "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
           "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}
    if arch in hf_hybrid.ARCHS:
        out.update(hf_hybrid.config_to_hf(cfg, arch))
        return out
    if arch == "gpt2":
        out.update(n_embd=cfg.d_model, n_layer=n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff,
                   n_positions=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps,
                   activation_function=_GPT2_ACTS_OUT[cfg.mlp], scale_attn_weights=True,
                   resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout)
        return out
    out.update(hidden_size=cfg.d_model, num_hidden_layers=n_layers, num_attention_heads=cfg.n_heads,
               num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, intermediate_size=cfg.d_ff,
               hidden_act=_GLU_ACTS_OUT[cfg.mlp], max_position_embeddings=cfg.max_seq_len,
               rms_norm_eps=cfg.norm_eps, rope_parameters=_rope_to_hf(cfg), attention_dropout=cfg.dropout)
    if arch in ("llama", "qwen3"):
        out["attention_bias"] = cfg.qkv_bias
    if arch == "llama":
        out["mlp_bias"] = cfg.mlp_bias
    if arch in ("mistral", "mixtral"):
        out["sliding_window"] = cfg.sliding_window
    if arch == "mixtral":  # a Mixtral has no dense MLP: its intermediate_size is the experts' width
        out.update(intermediate_size=cfg.moe_d_ff, num_local_experts=cfg.n_experts,
                   num_experts_per_tok=cfg.n_experts_per_token, router_aux_loss_coef=cfg.moe_aux_loss_coef,
                   router_jitter_noise=0.0, output_router_logits=False)
    if arch in ("qwen2", "qwen3"):
        sliding = cfg.sliding_window is not None
        out.update(use_sliding_window=sliding, sliding_window=cfg.sliding_window,
                   max_window_layers=0 if sliding else n_layers,
                   layer_types=["sliding_attention" if sliding else "full_attention"] * n_layers)
    return out


# ---------------------------------------------------------------- files

_SAFE, _SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
_BIN, _BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def _read_json(file: Path) -> dict:
    if not file.is_file():
        raise CheckpointError(f"{file}: not found")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: invalid JSON ({_one_line(e)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object, found {type(data).__name__}")
    return data


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _read_weight_file(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"{file}: weight file not found")
    try:
        if file.name.endswith(".safetensors"):
            return load_file(file)
        # pickle files only through the restricted unpickler: tensors and plain containers, no code
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{file}: corrupt or truncated weight file ({_one_line(e)})") from None
    except Exception as e:  # the restricted unpickler raises UnpicklingError and friends
        raise CheckpointError(f"{file}: cannot be read safely ({type(e).__name__}: {_one_line(e)})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{file}: not a dict of tensors")
    return sd


def _read_sharded(index_file: Path) -> dict[str, torch.Tensor]:
    weight_map = _read_json(index_file).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_file}: no 'weight_map' object")
    sd = {}
    for shard in sorted(set(weight_map.values())):
        tensors = _read_weight_file(index_file.parent / shard)
        lacking = sorted(k for k, f in weight_map.items() if f == shard and k not in tensors)
        if lacking:
            raise CheckpointError(f"{index_file.parent / shard}: lacks tensors the index puts there: {few(lacking)}")
        sd.update(tensors)
    return sd


def read_hf_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint directory, under their HF names, on the CPU."""
    path = Path(path)
    for name, reader in ((_SAFE, _read_weight_file), (_SAFE_INDEX, _read_sharded),
                         (_BIN, _read_weight_file), (_BIN_INDEX, _read_sharded)):
        if (path / name).is_file():
            return reader(path / name)
    raise CheckpointError(f"{path}: no weight file ({_SAFE}, {_SAFE_INDEX}, {_BIN} or {_BIN_INDEX})")


def read_hf_config(path: str | os.PathLike) -> dict:
    """The config.json of an HF checkpoint directory, as a dict."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    return _read_json(path / "config.json")


def load_hf_checkpoint(path: str | os.PathLike, dtype: torch.dtype | None = None, device="cpu") -> Decoder:
    """An HF checkpoint directory (config.json + safetensors, sharded or not, or pytorch_model.bin) -> Decoder.

    dtype: of the parameters; None keeps the checkpoint's. The model is returned in eval mode.
    """
    path = Path(path)
    cfg, arch = config_from_hf(read_hf_config(path))
    sd = state_dict_from_hf(read_hf_state_dict(path), cfg, arch)
    if dtype is None:
        dtype = next((t.dtype for t in sd.values() if t.is_floating_point()), torch.float32)
    with torch.device(device):
        model = Decoder(cfg)
    cfg = model.config
    check_against(model, sd, _rules(cfg, arch), ("lm_head.weight",) if cfg.tie_embeddings else (), arch)
    for p in model.parameters():  # not model.to(dtype): derived RoPE frequencies stay float32
        p.data = p.data.to(dtype)
    model.load_state_dict(sd, strict=not cfg.tie_embeddings)  # tied: lm_head is embed, already loaded
    return model.eval()


def _shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Greedy split in key order; a tensor larger than max_bytes gets a shard of its own."""
    shards, size = [{}], 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards, size = shards + [{}], 0
        shards[-1][name] = t
        size += n
    return shards


def save_hf_checkpoint(model: Decoder, path: str | os.PathLike, arch: str,
                       max_shard_bytes: int = 2 * 1024**3, overwrite: bool = False) -> None:
    """Write `model` as an HF `arch` checkpoint directory: config.json + model.safetensors, or shards
    model-0000i-of-0000n.safetensors with model.safetensors.index.json above max_shard_bytes.

    The directory appears whole or not at all. Does not modify the model.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise CheckpointError(f"{path}: exists and is not empty (pass overwrite=True to replace it)")
    hf_cfg = config_to_hf(model.config, arch, dtype=model.dtype)
    # fresh contiguous CPU copies: split q/k/v views share storage and transposed or strided
    # weights (as inference code may leave them) cannot be written by safetensors
    tensors = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
               for k, v in state_dict_to_hf(model.state_dict(), model.config, arch).items()}
    shards = _shards(tensors, max_shard_bytes)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True) + "\n")
        if len(shards) == 1:
            save_file(shards[0], tmp / _SAFE, metadata={"format": "pt"})
            return
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, tmp / name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / _SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
