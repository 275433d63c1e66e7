"""HF layouts of the Mamba-2 families: `Mamba2ForCausalLM` ("mamba2") and `NemotronHForCausalLM`
("nemotron_h"). hf.py dispatches here for these archs (config in and out, key rules, prefixes,
what cannot be expressed); like hf.py, this is a border module that alone knows their HF names.

Unlike the dense layouts, HF layer i is our block i: both families already build one mixer per
block with its own pre-norm (`layers.{i}.norm`), which is exactly what Nemotron-H's
`hybrid_override_pattern` and our layer pattern describe. Mamba-2 parameters keep their names
(in_proj, conv1d, dt_bias, A_log, D, norm, out_proj); attention q/k/v fuse into our `wqkv`; the
non-gated MLP's up/down are our `w_in` / `w_out`.

Accepted on the way in: keys under `backbone.` or `model.` (or bare, from a base model), the
early `embedding.` spelling, and layer types named mamba/attention/mlp/moe,
linear_attention/full_attention/mlp/moe, or a hybrid_override_pattern string. Written: the names
transformers' save_pretrained writes (`backbone.` for both), and both the layer-type list and the
pattern string so older readers understand the config too.
"""

from __future__ import annotations

from ..config import ModelConfig
from .errors import CheckpointError

ARCHS = ("mamba2", "nemotron_h")
HF_CLASSES = {"mamba2": "Mamba2ForCausalLM", "nemotron_h": "NemotronHForCausalLM"}
# transformers 5 holds NemotronH under `model.` in memory but writes `backbone.`, as the hub checkpoints have it
_PREFIX = {"mamba2": "backbone.", "nemotron_h": "backbone."}
_LAYER_TYPES = {"mamba": "M", "linear_attention": "M", "attention": "*", "full_attention": "*", "mlp": "-",
                "moe": "E"}
_LAYER_TYPES_OUT = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
_MLP_ACTS = {"relu2": "relu2", "relu": "relu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
             "gelu_new": "gelu_tanh"}
_MLP_ACTS_OUT = {"relu2": "relu2", "relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
NO_POSITION_LIMIT = 1 << 20  # max_seq_len of a pure Mamba-2: it has no positions, so no limit

# (ours, HF names) relative to our block i and HF layer i, per block kind; absent biases are skipped
_MAMBA = [(f"mixer.{n}", (f"mixer.{n}",)) for n in (
    "in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight",
    "out_proj.weight", "out_proj.bias")]
_BLOCK_RULES = {
    "mamba": _MAMBA,
    "attention": [("mixer.wqkv.weight", tuple(f"mixer.{p}_proj.weight" for p in "qkv")),
                  ("mixer.wo.weight", ("mixer.o_proj.weight",))],
    "mlp": [("mixer.w_in.weight", ("mixer.up_proj.weight",)), ("mixer.w_in.bias", ("mixer.up_proj.bias",)),
            ("mixer.w_out.weight", ("mixer.down_proj.weight",)), ("mixer.w_out.bias", ("mixer.down_proj.bias",))],
}


def rules(cfg: ModelConfig, arch: str) -> list[tuple[str, tuple[str, ...]]]:
    """(our key, HF keys) for every tensor of `cfg` written as HF `arch`."""
    problems = _pattern_problems(cfg, arch)
    if problems:
        raise CheckpointError(f"cannot map this model to HF {arch}: {'; '.join(problems)}")
    prefix = _PREFIX[arch]
    out = [("embed.weight", (prefix + "embeddings.weight",)), ("final_norm.weight", (prefix + "norm_f.weight",)),
           ("lm_head.weight", ("lm_head.weight",))]
    for i, kind in enumerate(cfg.blocks):
        layer = f"{prefix}layers.{i}."
        for ours, hf in [("norm.weight", ("norm.weight",))] + _BLOCK_RULES[kind]:
            out.append((f"blocks.{i}.{ours}", tuple(layer + h for h in hf)))
    return out


def canonical_keys(sd: dict, arch: str) -> dict:
    """HF keys under any accepted prefix -> the ones `rules` uses. Nemotron-H's multi-token-prediction
    layers (`mtp.*`) are dropped, as transformers drops them: generation does not use them."""
    prefix, out = _PREFIX[arch], {}
    for key, value in sd.items():
        if key.startswith("lm_head."):
            out[key] = value
            continue
        for p in ("backbone.", "model."):
            key = key.removeprefix(p) if key.startswith(p) else key
        if key.startswith("mtp."):
            continue
        if key.startswith("embedding."):  # the first Mamba-2 checkpoints
            key = "embeddings." + key.removeprefix("embedding.")
        out[prefix + key] = value
    return out


# ---------------------------------------------------------------- config.json

def _get(hf: dict, *names, default=None):
    """The first of `names` present in the config (current name first, then older spellings)."""
    for name in names:
        if hf.get(name) is not None:
            return hf[name]
    if default is None:
        raise CheckpointError(f"config.json lacks {names[0]!r}")
    return default


def _float(value) -> float:
    # transformers 5 writes non-finite floats as {"__float__": "Infinity"}, older versions as Infinity
    return float(value["__float__"]) if isinstance(value, dict) and "__float__" in value else float(value)


def _mamba_fields(hf: dict, heads: str, head_dim: str, state: str) -> dict:
    """The Mamba-2 fields; `heads`, `head_dim`, `state` name them in this arch's config. Older
    Nemotron-H configs spell the rest mamba_n_groups, mamba_d_conv, mamba_dt_min, ..."""
    if _get(hf, "mamba_hidden_act", "hidden_act", default="silu") != "silu":
        raise CheckpointError("only SiLU Mamba activations are supported")
    o = "mamba_"
    return dict(
        mamba_n_heads=_get(hf, heads), mamba_head_dim=_get(hf, head_dim),
        d_state=_get(hf, state), mamba_n_groups=_get(hf, "n_groups", o + "n_groups", default=1),
        d_conv=_get(hf, "conv_kernel", o + "d_conv", default=4),
        mamba_chunk_size=_get(hf, "chunk_size", o + "chunk_size", default=256),
        mamba_conv_bias=bool(_get(hf, "use_conv_bias", o + "conv_bias", default=True)),
        mamba_proj_bias=bool(_get(hf, "use_bias", default=False)),
        mamba_dt_min=float(_get(hf, "time_step_min", o + "dt_min", default=0.001)),
        mamba_dt_max=float(_get(hf, "time_step_max", o + "dt_max", default=0.1)),
        mamba_dt_init_floor=float(_get(hf, "time_step_floor", o + "dt_init_floor", default=1e-4)),
        norm="rmsnorm", norm_eps=float(_get(hf, "layer_norm_epsilon", default=1e-5)), position="none",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def _layer_pattern(hf: dict) -> str:
    types = hf.get("layers_block_type") or hf.get("layer_types")
    if types is None:
        pattern = _get(hf, "hybrid_override_pattern")
        if set(pattern) - set(_LAYER_TYPES.values()):
            raise CheckpointError(f"hybrid_override_pattern {pattern!r} has unknown symbols")
        return pattern
    unknown = sorted(set(types) - set(_LAYER_TYPES))
    if unknown:
        raise CheckpointError(f"unknown Nemotron-H layer types {unknown}; known: {', '.join(_LAYER_TYPES)}")
    return "".join(_LAYER_TYPES[t] for t in types)


def config_fields(hf: dict, arch: str) -> dict:
    """ModelConfig fields (all but vocab and special tokens) from an HF config.json of `arch`."""
    if arch == "mamba2":
        d, heads, head_dim = _get(hf, "hidden_size"), _get(hf, "num_heads"), _get(hf, "head_dim")
        if heads * head_dim != _get(hf, "expand", default=2) * d:
            raise CheckpointError(f"Mamba2 config: num_heads x head_dim ({heads} x {head_dim}) != expand x hidden_size")
        low, high = (_float(v) for v in _get(hf, "time_step_limit", default=(0.0, float("inf"))))
        # attention fields are unused: one head of the full width keeps them valid
        return dict(_mamba_fields(hf, "num_heads", "head_dim", "state_size"), d_model=d,
                    layer_pattern="M" * _get(hf, "num_hidden_layers"), n_heads=1, n_kv_heads=1,
                    max_seq_len=NO_POSITION_LIMIT, mamba_dt_limit=(low, high))
    pattern = _layer_pattern(hf)
    if "E" in pattern:
        raise CheckpointError("Nemotron-H MoE layers ('moe') are not supported by this converter yet")
    if hf.get("sliding_window") is not None:
        raise CheckpointError("Nemotron-H with sliding-window attention is not supported")
    act = _get(hf, "mlp_hidden_act", default="relu2")
    if act not in _MLP_ACTS:
        raise CheckpointError(f"mlp_hidden_act {act!r} is not supported; supported: {', '.join(_MLP_ACTS)}")
    d, n_heads = _get(hf, "hidden_size"), _get(hf, "num_attention_heads")
    fields = _mamba_fields(hf, "mamba_num_heads", "mamba_head_dim", "ssm_state_size")
    # transformers' NemotronH clamps dt below at time_step_min and has no upper limit, and never
    # ties its LM head to the embedding, whatever tie_word_embeddings says
    fields.update(tie_embeddings=False,
        d_model=d, layer_pattern=pattern, n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or d // n_heads, d_ff=_get(hf, "intermediate_size"), mlp=_MLP_ACTS[act],
        mlp_bias=bool(hf.get("mlp_bias", False)), max_seq_len=_get(hf, "max_position_embeddings", default=4096),
        mamba_dt_limit=(fields["mamba_dt_min"], None))
    return fields


def _pattern_problems(cfg: ModelConfig, arch: str) -> list[str]:
    if arch == "mamba2" and set(cfg.pattern) != {"M"}:
        return [f"layer pattern {cfg.pattern!r} is not all Mamba-2 blocks ('M')"]
    if arch == "nemotron_h" and "E" in cfg.pattern:
        return ["MoE blocks ('E') in a Nemotron-H layout are not supported yet"]
    return []


def problems(cfg: ModelConfig, arch: str) -> list[str]:
    """Why `cfg` cannot be written as HF `arch` (empty when it can)."""
    p = _pattern_problems(cfg, arch)
    want = dict(norm="rmsnorm", norm_position="pre")
    if arch == "mamba2":
        if cfg.mamba_d_inner % cfg.d_model:
            p.append(f"Mamba inner width {cfg.mamba_d_inner} is not a multiple of d_model {cfg.d_model} (HF's expand)")
    else:
        want.update(position="none", tie_embeddings=False, qkv_bias=False, attn_out_bias=False, qk_norm=False, sliding_window=None,
                    mamba_dt_limit=(cfg.mamba_dt_min, None))
        if cfg.mlp not in _MLP_ACTS_OUT:
            p.append(f"mlp={cfg.mlp!r} (needs one of {sorted(_MLP_ACTS_OUT)})")
    return p + [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in want.items() if getattr(cfg, k) != v]


def arch_for(cfg: ModelConfig) -> str:
    return "mamba2" if set(cfg.pattern) == {"M"} else "nemotron_h"


def config_to_hf(cfg: ModelConfig, arch: str) -> dict:
    """Architecture fields of an HF config.json for `cfg` (hf.config_to_hf adds the common ones)."""
    low, high = cfg.mamba_dt_limit
    common = dict(hidden_size=cfg.d_model, n_groups=cfg.mamba_n_groups, conv_kernel=cfg.d_conv,
                  chunk_size=cfg.mamba_chunk_size, use_conv_bias=cfg.mamba_conv_bias, use_bias=cfg.mamba_proj_bias,
                  time_step_min=cfg.mamba_dt_min, time_step_max=cfg.mamba_dt_max,
                  time_step_floor=cfg.mamba_dt_init_floor, layer_norm_epsilon=cfg.norm_eps)
    if arch == "mamba2":
        return dict(common, num_hidden_layers=len(cfg.blocks), num_heads=cfg.mamba_n_heads,
                    head_dim=cfg.mamba_head_dim, expand=cfg.mamba_d_inner // cfg.d_model, state_size=cfg.d_state,
                    hidden_act="silu", time_step_limit=[low, float("inf") if high is None else high],
                    residual_in_fp32=True)
    return dict(common, layers_block_type=[_LAYER_TYPES_OUT[s] for s in cfg.pattern],
                hybrid_override_pattern=cfg.pattern, num_attention_heads=cfg.n_heads,
                num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, intermediate_size=cfg.d_ff,
                mlp_hidden_act=_MLP_ACTS_OUT[cfg.mlp], mlp_bias=cfg.mlp_bias, attention_bias=False,
                max_position_embeddings=cfg.max_seq_len, mamba_num_heads=cfg.mamba_n_heads,
                mamba_head_dim=cfg.mamba_head_dim, ssm_state_size=cfg.d_state, mamba_hidden_act="silu",
                residual_in_fp32=False)
