"""HF T5 checkpoints (`T5ForConditionalGeneration`, v1.0 and v1.1) in and out.

T5 encoder layer i is our encoder's blocks 2i (self-attention) and 2i + 1 (MLP); decoder layer i is
our decoder blocks 3i (self-attention), 3i + 1 (cross-attention, `EncDecAttention`) and 3i + 2 (MLP).
The relative position bias lives in layer 0 of each stack and is shared by all its layers. T5
does not divide attention logits by sqrt(d_kv); ours does, so query weights are stored times
sqrt(d_kv) (hf_rules.py). The LM head is tied to `shared` when the checkpoint has no `lm_head.weight`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..config import ConfigError, ModelConfig
from ..models.seq2seq import Seq2Seq
from . import hf_rules
from .errors import CheckpointError
from .hf_rules import Rule

# T5's dense_act_fn (plain) or the gated form's activation -> our MLP kind
_PLAIN = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_GATED = {"gelu_new": "geglu", "gelu_pytorch_tanh": "geglu", "gelu": "geglu", "relu": "reglu", "silu": "swiglu"}
_PLAIN_OUT = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new"}
_GATED_OUT = {"geglu": "gated-gelu", "reglu": "gated-relu", "swiglu": "gated-silu"}
_EMBED_ALIASES = {"shared.weight": ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")}


def is_t5(hf: dict) -> bool:
    return hf.get("model_type") == "t5" or any(a.startswith("T5") for a in hf.get("architectures") or ())


def _req(hf: dict, key: str):
    if hf.get(key) is None:
        raise CheckpointError(f"config.json lacks {key!r}")
    return hf[key]


def _mlp_from_hf(hf: dict) -> str:
    proj = hf.get("feed_forward_proj", "relu")
    gated, _, act = proj.rpartition("-")
    if gated not in ("", "gated"):
        raise CheckpointError(f"T5 feed_forward_proj {proj!r} is not supported")
    if gated and act == "gelu":  # transformers' historical alias: gated-gelu means the tanh GELU
        act = "gelu_new"
    table = _GATED if gated else _PLAIN
    if act not in table:
        raise CheckpointError(f"T5 feed_forward_proj {proj!r} is not supported; supported activations: {', '.join(table)}")
    return table[act]


def config_from_hf(hf: dict, tensor_names: set[str] | frozenset[str] | None = None) -> ModelConfig:
    """A parsed T5 config.json (+ the checkpoint's tensor names: an `lm_head.weight` unties the head)."""
    if hf.get("is_encoder_decoder") is False or hf.get("is_decoder"):
        raise CheckpointError("only the encoder-decoder T5 (T5ForConditionalGeneration) is supported")
    tied = tensor_names is None or "lm_head.weight" not in tensor_names
    # transformers >= 5 writes scale_decoder_outputs; before, tie_word_embeddings meant both
    scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
    n_layers = _req(hf, "num_layers")
    try:
        return ModelConfig(
            family="seq2seq", vocab_size=_req(hf, "vocab_size"), d_model=_req(hf, "d_model"), n_layers=n_layers,
            n_decoder_layers=hf.get("num_decoder_layers") or n_layers, n_heads=_req(hf, "num_heads"),
            head_dim=_req(hf, "d_kv"), d_ff=_req(hf, "d_ff"), max_seq_len=hf.get("n_positions") or 512,
            position="relative", relative_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_max_distance=hf.get("relative_attention_max_distance", 128), norm="rmsnorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-6), norm_position="pre", mlp=_mlp_from_hf(hf), mlp_bias=False,
            qkv_bias=False, attn_out_bias=False, tie_embeddings=tied, scale_decoder_output=bool(scale),
            dropout=float(hf.get("dropout_rate", 0.0)), pad_token_id=hf.get("pad_token_id", 0),
            eos_token_id=hf.get("eos_token_id", 1), bos_token_id=None,
            decoder_start_token_id=hf.get("decoder_start_token_id", hf.get("pad_token_id", 0)))
    except ConfigError as e:
        raise CheckpointError(f"HF t5 config describes no valid model: {e}") from None


def _attention(ours: str, hf: str, inner: int, q_scale: float, cross: bool) -> list[Rule]:
    if cross:
        return [Rule(f"{ours}mixer.wq.weight", (f"{hf}q.weight",), scales=(q_scale,)),
                Rule(f"{ours}mixer.wkv.weight", (f"{hf}k.weight", f"{hf}v.weight"), sizes=(inner, inner)),
                Rule(f"{ours}mixer.wo.weight", (f"{hf}o.weight",))]
    return [Rule(f"{ours}mixer.wqkv.weight", tuple(f"{hf}{p}.weight" for p in "qkv"), sizes=(inner,) * 3,
                 scales=(q_scale, 1.0, 1.0)),
            Rule(f"{ours}mixer.wo.weight", (f"{hf}o.weight",))]


def _mlp(ours: str, hf: str, cfg: ModelConfig) -> list[Rule]:
    gated = cfg.mlp.endswith("glu")
    w_in = (f"{hf}DenseReluDense.wi_0.weight", f"{hf}DenseReluDense.wi_1.weight") if gated else (f"{hf}DenseReluDense.wi.weight",)
    return [Rule(f"{ours}norm.weight", (f"{hf}layer_norm.weight",)),
            Rule(f"{ours}mixer.w_in.weight", w_in, sizes=(cfg.d_ff,) * len(w_in)),
            Rule(f"{ours}mixer.w_out.weight", (f"{hf}DenseReluDense.wo.weight",))]


def rules(cfg: ModelConfig) -> list[Rule]:
    inner, q_scale = cfg.n_heads * cfg.head_dim, math.sqrt(cfg.head_dim)
    out = [Rule("encoder.embed.weight", ("shared.weight",)),
           Rule("encoder.rel_bias.embed.weight", ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",)),
           Rule("dec_rel_bias.embed.weight", ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",)),
           Rule("encoder.final_norm.weight", ("encoder.final_layer_norm.weight",)),
           Rule("final_norm.weight", ("decoder.final_layer_norm.weight",)),
           Rule("lm_head.weight", ("lm_head.weight",))]
    for i in range(cfg.n_layers):
        hf, ours = f"encoder.block.{i}.layer.", f"encoder.blocks.{2 * i}."
        out += [Rule(f"{ours}norm.weight", (f"{hf}0.layer_norm.weight",)),
                *_attention(ours, f"{hf}0.SelfAttention.", inner, q_scale, cross=False),
                *_mlp(f"encoder.blocks.{2 * i + 1}.", f"{hf}1.", cfg)]
    for i in range(cfg.n_decoder_layers):
        hf, (a, c, m) = f"decoder.block.{i}.layer.", (f"decoder_blocks.{3 * i + j}." for j in range(3))
        out += [Rule(f"{a}norm.weight", (f"{hf}0.layer_norm.weight",)),
                *_attention(a, f"{hf}0.SelfAttention.", inner, q_scale, cross=False),
                Rule(f"{c}norm.weight", (f"{hf}1.layer_norm.weight",)),
                *_attention(c, f"{hf}1.EncDecAttention.", inner, q_scale, cross=True),
                *_mlp(m, f"{hf}2.", cfg)]
    return out


def _tied(cfg: ModelConfig) -> tuple[str, ...]:
    return ("lm_head.weight",) if cfg.tie_embeddings else ()


def state_dict_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return hf_rules.from_hf(sd, rules(cfg), aliases=_EMBED_ALIASES)


def _check_layout(cfg: ModelConfig) -> None:
    want = dict(family="seq2seq", position="relative", norm="rmsnorm", norm_position="pre", qkv_bias=False,
                attn_out_bias=False, mlp_bias=False, n_kv_heads=cfg.n_heads, embed_norm=False, type_vocab_size=0)
    problems = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in want.items() if getattr(cfg, k) != v]
    if cfg.pattern != "*-" * cfg.n_layers:
        problems.append(f"encoder pattern {cfg.pattern!r} (needs '*-' per layer)")
    if cfg.mlp not in {**_PLAIN_OUT, **_GATED_OUT}:
        problems.append(f"mlp={cfg.mlp!r} (needs one of {sorted({**_PLAIN_OUT, **_GATED_OUT})})")
    if problems:
        raise CheckpointError(f"this config has no HF T5 equivalent: {'; '.join(problems)}")


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    _check_layout(cfg)
    proj = _GATED_OUT.get(cfg.mlp) or _PLAIN_OUT[cfg.mlp]
    return {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "dtype": str(dtype).removeprefix("torch."),
            "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "d_kv": cfg.head_dim, "d_ff": cfg.d_ff,
            "num_layers": cfg.n_layers, "num_decoder_layers": cfg.n_decoder_layers, "num_heads": cfg.n_heads,
            "relative_attention_num_buckets": cfg.relative_buckets,
            "relative_attention_max_distance": cfg.relative_max_distance, "dropout_rate": cfg.dropout,
            "layer_norm_epsilon": cfg.norm_eps, "feed_forward_proj": proj, "is_encoder_decoder": True,
            # older transformers read the output scale from tie_word_embeddings, newer from scale_decoder_outputs
            "tie_word_embeddings": cfg.scale_decoder_output, "scale_decoder_outputs": cfg.scale_decoder_output,
            "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else 0,
            "eos_token_id": cfg.eos_token_id if cfg.eos_token_id is not None else 1,
            "decoder_start_token_id": cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else 0}


def state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return hf_rules.to_hf(sd, rules(cfg), skip=_tied(cfg))


def load_t5(path: str | os.PathLike, dtype: torch.dtype | None = None, device="cpu") -> Seq2Seq:
    """An HF T5 directory -> Seq2Seq in eval mode (dtype None: the checkpoint's)."""
    from .hf import read_hf_config, read_hf_state_dict

    raw = read_hf_state_dict(path)
    cfg = config_from_hf(read_hf_config(path), set(raw))
    sd = state_dict_from_hf(raw, cfg)
    with torch.device(device):
        model = Seq2Seq(cfg)
    hf_rules.check_against(model, sd, rules(cfg), _tied(cfg))
    return hf_rules.load_weights(model, sd, dtype)


def save_t5(model: Seq2Seq, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `model` as an HF T5ForConditionalGeneration directory."""
    cfg = model.config
    hf_rules.write_hf_dir(path, config_to_hf(cfg, model.dtype), state_dict_to_hf(model.state_dict(), cfg), overwrite)
    return Path(path)
