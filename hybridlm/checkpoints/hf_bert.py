"""HF BERT checkpoints (`BertModel`, `BertForMaskedLM`; sentence-transformers' BERT encoders) in and out.

HF BERT layer i is our encoder's block 2i (attention; its norm is `attention.output.LayerNorm`, a
post-norm) and block 2i + 1 (MLP; its norm is `output.LayerNorm`). q/k/v fuse into `wqkv`. The MLM
head's decoder shares the word embedding when tied (its bias is then stored as `cls.predictions.bias`;
untied, as `cls.predictions.decoder.bias`). Whether
the model has a pooler or an MLM head is read from the tensors the checkpoint holds.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import ConfigError, ModelConfig
from ..models.encoder import Encoder
from . import hf_rules
from .errors import CheckpointError
from .hf_rules import Rule

_ACTS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
_ACTS_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
_IGNORED = ("embeddings.position_ids", "embeddings.token_type_ids")  # index buffers some versions saved


def is_bert(hf: dict) -> bool:
    return hf.get("model_type") == "bert" or any(a.startswith("Bert") for a in hf.get("architectures") or ())


def _req(hf: dict, key: str):
    if hf.get(key) is None:
        raise CheckpointError(f"config.json lacks {key!r}")
    return hf[key]


def _base_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`BertForMaskedLM` prefixes the encoder with `bert.`; `BertModel` does not."""
    return {k.removeprefix("bert."): v for k, v in sd.items()}


def tensor_names(path: str | os.PathLike) -> set[str]:
    """The tensor names of an HF directory's safetensors, from the headers only (no weights read)."""
    import json

    from safetensors import safe_open

    path = Path(path)
    if (path / "model.safetensors.index.json").is_file():
        return set(json.loads((path / "model.safetensors.index.json").read_text()).get("weight_map", {}))
    if (path / "model.safetensors").is_file():
        with safe_open(path / "model.safetensors", "pt") as f:
            return set(f.keys())
    return set()


def config_from_hf(hf: dict, tensor_names: set[str] | frozenset[str] = frozenset()) -> ModelConfig:
    """A parsed BERT config.json (plus the checkpoint's tensor names, for the heads) -> our config."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"BERT position_embedding_type {hf['position_embedding_type']!r} is not supported "
                              "(only 'absolute')")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise CheckpointError("BERT as a decoder (is_decoder / add_cross_attention) is not supported")
    act = hf.get("hidden_act", "gelu")
    if act not in _ACTS:
        raise CheckpointError(f"BERT hidden_act {act!r} is not supported; supported: {', '.join(_ACTS)}")
    names = {k.removeprefix("bert.") for k in tensor_names}
    try:
        return ModelConfig(
            family="encoder", vocab_size=_req(hf, "vocab_size"), d_model=_req(hf, "hidden_size"),
            n_layers=_req(hf, "num_hidden_layers"), n_heads=_req(hf, "num_attention_heads"),
            d_ff=_req(hf, "intermediate_size"), max_seq_len=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2), position="learned", norm="layernorm",
            norm_eps=hf.get("layer_norm_eps", 1e-12), norm_position="post", embed_norm=True, mlp=_ACTS[act],
            mlp_bias=True, qkv_bias=True, attn_out_bias=True,
            pooler=any(n.startswith("pooler.") for n in names),
            mlm_head=any(n.startswith("cls.predictions.") for n in names),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)), dropout=float(hf.get("hidden_dropout_prob", 0.0)),
            pad_token_id=hf.get("pad_token_id"), mask_token_id=hf.get("mask_token_id"), bos_token_id=None,
            eos_token_id=None)
    except ConfigError as e:
        raise CheckpointError(f"HF bert config describes no valid model: {e}") from None


def _ln(ours: str, hf: str) -> list[Rule]:
    return [Rule(f"{ours}.weight", (f"{hf}.weight",)), Rule(f"{ours}.bias", (f"{hf}.bias",))]


def _linear(ours: str, hf: str) -> list[Rule]:
    return _ln(ours, hf)  # a Linear's tensors are named like a LayerNorm's


def rules(cfg: ModelConfig) -> list[Rule]:
    """Our keys <-> BERT keys (without the `bert.` prefix of BertForMaskedLM's encoder)."""
    d = cfg.d_model
    out = [Rule("embed.weight", ("embeddings.word_embeddings.weight",)),
           Rule("pos_embed.weight", ("embeddings.position_embeddings.weight",)),
           Rule("type_embed.weight", ("embeddings.token_type_embeddings.weight",)),
           *_ln("embed_norm", "embeddings.LayerNorm"), *_linear("pooler.dense", "pooler.dense"),
           *_linear("mlm.dense", "cls.predictions.transform.dense"),
           *_ln("mlm.norm", "cls.predictions.transform.LayerNorm"),
           Rule("mlm.lm_head.bias", ("cls.predictions.bias",)),
           Rule("mlm.lm_head.weight", ("cls.predictions.decoder.weight",))]
    for i in range(cfg.n_layers):
        hf, a, m = f"encoder.layer.{i}.", f"blocks.{2 * i}.", f"blocks.{2 * i + 1}."
        for kind in ("weight", "bias"):
            out.append(Rule(f"{a}mixer.wqkv.{kind}", tuple(f"{hf}attention.self.{p}.{kind}" for p in ("query", "key", "value")),
                            sizes=(d, d, d)))
        out += [*_linear(f"{a}mixer.wo", f"{hf}attention.output.dense"), *_ln(f"{a}norm", f"{hf}attention.output.LayerNorm"),
                *_linear(f"{m}mixer.w_in", f"{hf}intermediate.dense"), *_linear(f"{m}mixer.w_out", f"{hf}output.dense"),
                *_ln(f"{m}norm", f"{hf}output.LayerNorm")]
    return out


def _tied(cfg: ModelConfig) -> tuple[str, ...]:
    return ("mlm.lm_head.weight",) if cfg.mlm_head and cfg.tie_embeddings else ()


def state_dict_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    sd = _base_keys(sd)
    if cfg.tie_embeddings:  # the tied decoder matrix is the word embedding, whichever name holds it
        head = sd.pop("cls.predictions.decoder.weight", None)
        if head is not None:
            sd.setdefault("embeddings.word_embeddings.weight", head)
    if "cls.predictions.decoder.bias" in sd:  # the bias the decoder adds; `bias` is only its tied alias
        sd["cls.predictions.bias"] = sd.pop("cls.predictions.decoder.bias")
    return hf_rules.from_hf(sd, rules(cfg), _IGNORED)


def _check_layout(cfg: ModelConfig) -> None:
    want = dict(family="encoder", position="learned", norm="layernorm", norm_position="post", embed_norm=True,
                qkv_bias=True, attn_out_bias=True, mlp_bias=True, n_kv_heads=cfg.n_heads,
                head_dim=cfg.d_model // cfg.n_heads)
    problems = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in want.items() if getattr(cfg, k) != v]
    if cfg.pattern != "*-" * cfg.n_layers:
        problems.append(f"layer pattern {cfg.pattern!r} (needs '*-' per layer)")
    if cfg.mlp not in _ACTS_OUT:
        problems.append(f"mlp={cfg.mlp!r} (needs one of {sorted(_ACTS_OUT)})")
    if cfg.type_vocab_size < 1:
        problems.append("type_vocab_size=0 (BERT has token types)")
    if problems:
        raise CheckpointError(f"this config has no HF BERT equivalent: {'; '.join(problems)}")


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    _check_layout(cfg)
    return {"architectures": ["BertForMaskedLM" if cfg.mlm_head else "BertModel"], "model_type": "bert",
            "dtype": str(dtype).removeprefix("torch."), "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads, "intermediate_size": cfg.d_ff,
            "hidden_act": _ACTS_OUT[cfg.mlp], "max_position_embeddings": cfg.max_seq_len,
            "type_vocab_size": cfg.type_vocab_size, "layer_norm_eps": cfg.norm_eps,
            "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
            "position_embedding_type": "absolute", "tie_word_embeddings": cfg.tie_embeddings,
            "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else 0,
            # not a BertConfig field (the tokenizer knows [MASK]); kept so an MLM run's model reloads whole
            **({"mask_token_id": cfg.mask_token_id} if cfg.mask_token_id is not None else {})}


def state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = hf_rules.to_hf(sd, rules(cfg), skip=_tied(cfg))
    if cfg.mlm_head and not cfg.tie_embeddings:  # untied, transformers reads the decoder's own bias
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    if cfg.mlm_head:  # BertForMaskedLM: the encoder under `bert.`, the head under `cls.`
        out = {k if k.startswith("cls.") else "bert." + k: v for k, v in out.items()}
    return out


def load_bert(path: str | os.PathLike, dtype: torch.dtype | None = None, device="cpu") -> Encoder:
    """An HF BERT directory -> Encoder in eval mode (dtype None: the checkpoint's)."""
    from .hf import read_hf_config, read_hf_state_dict

    raw = read_hf_state_dict(path)
    cfg = config_from_hf(read_hf_config(path), set(raw))
    sd = state_dict_from_hf(raw, cfg)
    with torch.device(device):
        model = Encoder(cfg)
    hf_rules.check_against(model, sd, rules(cfg), _tied(cfg))
    return hf_rules.load_weights(model, sd, dtype)


def save_bert(model: Encoder, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `model` as an HF BERT directory (BertModel, or BertForMaskedLM with an MLM head)."""
    cfg = model.config
    hf_rules.write_hf_dir(path, config_to_hf(cfg, model.dtype), state_dict_to_hf(model.state_dict(), cfg), overwrite)
    return Path(path)
