"""GGUF checkpoints out: a dense Llama-shaped model -> a file llama.cpp loads and runs.

The container is written by the `gguf` package's GGUFWriter; what goes in it is ours, the inverse
of the reader in gguf.py, and uses its name table:
- our fused q/k/v rows are split into attn_q/attn_k/attn_v and gate/up rows into ffn_gate/ffn_up;
- q and k rows are permuted to llama.cpp's interleaved-pair RoPE layout (`permute` in llama.cpp's
  convert_hf_to_gguf.py; the reader undoes it);
- a tied LM head is written once, as token_embd (llama.cpp ties when output.weight is absent);
- the tokenizer (tokens, merges, types, special ids, chat template) goes in as metadata: copied
  field by field from a GGUF source, otherwise built from our Tokenizer.

Storage types (`quant`): f32 and f16 store every matrix as floats. q8_0, q4_0 and q4_1 store the
block linears in that type: float weights are rounded as ggml's reference quantizers round them
(gguf_blocks.py), and a quantized linear (QuantLinear from `hybridlm quantize`, int8/int4 at
group 32) is written as its own codes and scales, bit for bit. As llama.cpp's quantizer does for
these types, the token embedding and output matrix are Q8_0 and norms stay F32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType
from torch import nn

from ..config import ModelConfig
from ..nn.positions import rope_inv_freq
from ..nn.quant import QuantizedWeight, QuantLinear, dequantize_ref
from .atomic import atomic_path
from .errors import CheckpointError
from .gguf import _GLOBAL_NAMES, _LAYER_NAMES, _ROPE_FREQS, _bands
from .gguf_blocks import FLOAT_TYPES, QUANT_TYPES, QUANTIZERS, gguf_type_of, rows_of, to_gguf_blocks

Q = GGMLQuantizationType
WRITE_TYPES = (*FLOAT_TYPES, *QUANT_TYPES)
_FILE_TYPES = {Q.F32: LlamaFileType.ALL_F32, Q.F16: LlamaFileType.MOSTLY_F16, Q.Q8_0: LlamaFileType.MOSTLY_Q8_0,
               Q.Q4_0: LlamaFileType.MOSTLY_Q4_0, Q.Q4_1: LlamaFileType.MOSTLY_Q4_1}
_EDGE_TENSORS = ("token_embd.weight", "output.weight")  # Q8_0 in quantized files, as llama.cpp's quantizer
_TOKEN_NORMAL, _TOKEN_USER_DEFINED, _TOKEN_CONTROL, _TOKEN_UNUSED = 1, 4, 3, 5
_PRE_TOKENIZERS = ("smollm", "gpt-2", "llama-bpe", "qwen2")  # llama.cpp names tokenizer.py can rebuild


@dataclass
class GGUFWriteSummary:
    path: Path
    quant: str  # the requested storage type
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGUF type name -> tensors written
    copied_blocks: int = 0  # linears written from their own quantized codes, bit for bit
    bytes: int = 0  # file size


def export_problems(cfg: ModelConfig) -> list[str]:
    """Why `cfg` cannot be written as a llama.cpp Llama file (empty when it can)."""
    want = dict(position="rope", mlp="swiglu", norm="rmsnorm", norm_position="pre", qkv_bias=False,
                attn_out_bias=False, mlp_bias=False, qk_norm=False, sliding_window=None, n_experts=0)
    problems = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in want.items() if getattr(cfg, k) != v]
    if cfg.pattern != "*-" * (len(cfg.blocks) // 2):
        problems.append(f"layer pattern {cfg.pattern!r} is not a dense attention+MLP stack")
    return problems


def resolve_quant(model: nn.Module, quant: str | None) -> str:
    """The storage type to write: `quant` checked, or (None) the one type of a quantized model's
    linears, or f32 for a float model."""
    if quant is not None:
        if quant not in WRITE_TYPES:
            raise CheckpointError(f"unknown GGUF type {quant!r}; known: {', '.join(WRITE_TYPES)}")
        return quant
    own = {gguf_type_of(m.weight_q, name) for name, m in model.named_modules()
           if isinstance(m, QuantLinear) and name != "lm_head"}
    if len(own) > 1:
        raise CheckpointError(f"the model's linears are quantized as {sorted(t.name for t in own)}; pass --quant")
    return own.pop().name.lower() if own else "f32"


# -- tensors ------------------------------------------------------------------------------------------
def _rope_rows(start: int, end: int, heads: int | None) -> torch.Tensor:
    """Our rows [start, end) in the file's order: file row (h, i, j) is our row (h, j, i) for
    (heads, D/2, 2), i.e. halves -> interleaved pairs (the reader's inverse)."""
    rows = torch.arange(start, end)
    return rows if heads is None else rows.view(heads, 2, -1).transpose(1, 2).reshape(-1)


def _source(model: nn.Module, param: str) -> torch.Tensor | QuantizedWeight:
    """The float tensor or QuantizedWeight behind one of our parameter names."""
    owner, _, leaf = param.rpartition(".")
    module = model.get_submodule(owner)
    if isinstance(module, QuantLinear):
        return module.weight_q
    return getattr(module, leaf).detach()


def _planned(model: nn.Module, cfg: ModelConfig) -> list[tuple[str, str, torch.Tensor | None]]:
    """(GGUF name, our parameter, rows or None for all) for every tensor the file holds."""
    tied = type(model.lm_head) is nn.Linear and model.lm_head.weight is model.embed.weight
    plan = [(name, ours, None) for name, ours in _GLOBAL_NAMES.items() if not (tied and name == "output.weight")]
    bands = _bands(cfg)
    for i in range(cfg.n_layers):
        for suffix, (offset, param, band) in _LAYER_NAMES.items():
            rows = None if band is None else _rope_rows(*bands[band])
            plan.append((f"blk.{i}.{suffix}", f"blocks.{2 * i + offset}.{param}", rows))
    return plan


def _encode(name: str, src: torch.Tensor | QuantizedWeight, rows: torch.Tensor | None, quant: str
            ) -> tuple[np.ndarray, GGMLQuantizationType, bool]:
    """(array for GGUFWriter, its GGUF type, whether quantized codes were copied as they are)."""
    if isinstance(src, QuantizedWeight):
        src = src if rows is None else rows_of(src, rows)
        if quant in FLOAT_TYPES:
            src, rows = dequantize_ref(src), None  # its rows are already taken
        else:
            own = gguf_type_of(src, name)
            if own != QUANT_TYPES[quant] and name not in _EDGE_TENSORS:
                raise CheckpointError(f"{name} is stored as {own.name}; writing it as {quant.upper()} would round it "
                                      f"again: export with --quant {own.name.lower()} (or f32/f16)")
            blocks, qtype = to_gguf_blocks(src, name)
            return blocks, qtype, True
    w = src.float() if rows is None else src.float()[rows]
    if w.dim() == 1 or quant == "f32":
        return w.cpu().numpy().astype(np.float32), Q.F32, False
    if quant == "f16":
        return w.cpu().half().numpy(), Q.F16, False
    qtype = Q.Q8_0 if name in _EDGE_TENSORS else QUANT_TYPES[quant]
    if w.shape[1] % 32:
        raise CheckpointError(f"{name} has {w.shape[1]} inputs, not a multiple of 32: {qtype.name} stores blocks "
                              "of 32; export with --quant f16 or f32")
    blocks, _ = to_gguf_blocks(QUANTIZERS[qtype](w), name)
    return blocks, qtype, False


def _rope_freqs(cfg: ModelConfig) -> np.ndarray | None:
    """Llama 3 scaling as llama.cpp stores it: the per-frequency divisors (the reader recovers it)."""
    if cfg.rope_scaling != "llama3":
        return None
    return (rope_inv_freq(cfg.replace(rope_scaling="none")) / rope_inv_freq(cfg)).float().numpy()


# -- metadata -----------------------------------------------------------------------------------------
def _add_hparams(w: GGUFWriter, cfg: ModelConfig, name: str, qtype: GGMLQuantizationType) -> None:
    w.add_name(name)
    w.add_file_type(int(_FILE_TYPES[qtype]))
    w.add_quantization_version(2)
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_key_length(cfg.head_dim)  # pruned heads leave head_dim != d_model / n_heads
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    if cfg.rope_scaling == "linear":
        w.add_string("llama.rope.scaling.type", "linear")
        w.add_float32("llama.rope.scaling.factor", cfg.rope_factor)
    elif cfg.rope_scaling == "llama3":
        w.add_uint32("llama.rope.scaling.original_context_length", cfg.rope_original_max_seq_len)


def gguf_tokenizer_fields(tokenizer, vocab_size: int) -> dict[str, tuple[Any, GGUFValueType, GGUFValueType | None]]:
    """Our byte-level BPE Tokenizer as llama.cpp's `tokenizer.*` metadata: key -> (value, type,
    array item type). The inverse of Tokenizer.from_gguf_fields. The token list is padded with
    unused `[PAD{i}]` tokens up to the model's vocab_size (llama.cpp wants one per embedding row)."""
    import json

    from tokenizers import Tokenizer as Backend, models

    from ..tokenizer import _pre_tokenizer

    spec = json.loads(tokenizer.backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise CheckpointError("only byte-level BPE tokenizers can be written to GGUF (llama.cpp's 'gpt2' model)")
    pre = None
    for candidate in _PRE_TOKENIZERS:
        probe = Backend(models.BPE())
        probe.pre_tokenizer = _pre_tokenizer(candidate)
        if json.loads(probe.to_str())["pre_tokenizer"] == spec.get("pre_tokenizer"):
            pre = candidate
            break
    if pre is None:
        raise CheckpointError(f"the tokenizer's pre-tokenizer has no llama.cpp name ({', '.join(_PRE_TOKENIZERS)} known)")
    vocab = {i: t for t, i in model["vocab"].items()}
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    n = max([*vocab, *added]) + 1
    if n > vocab_size:
        raise CheckpointError(f"the tokenizer has {n} tokens but the model's embedding only {vocab_size} rows")
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(_TOKEN_CONTROL if added[i].get("special") else _TOKEN_USER_DEFINED)
        elif i in vocab:
            tokens.append(vocab[i])
            types.append(_TOKEN_NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(_TOKEN_UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    s, arr, u32 = GGUFValueType.STRING, GGUFValueType.ARRAY, GGUFValueType.UINT32
    fields = {"tokenizer.ggml.model": ("gpt2", s, None), "tokenizer.ggml.pre": (pre, s, None),
              "tokenizer.ggml.tokens": (tokens, arr, s),
              "tokenizer.ggml.token_type": (types, arr, GGUFValueType.INT32),
              "tokenizer.ggml.merges": (merges, arr, s),
              "tokenizer.ggml.add_bos_token": (bool(tokenizer.add_bos), GGUFValueType.BOOL, None),
              "tokenizer.ggml.add_space_prefix": (False, GGUFValueType.BOOL, None)}  # byte-level BPE never adds one
    for key, token in (("bos_token_id", tokenizer.bos_token), ("eos_token_id", tokenizer.eos_token),
                       ("unknown_token_id", tokenizer.unk_token), ("padding_token_id", tokenizer.pad_token)):
        if tokenizer.token_to_id(token) is not None:
            fields[f"tokenizer.ggml.{key}"] = (tokenizer.token_to_id(token), u32, None)
    if tokenizer.chat_template:
        fields["tokenizer.chat_template"] = (tokenizer.chat_template, s, None)
    return fields


def gguf_metadata_fields(path: str | os.PathLike, prefix: str = "tokenizer.") -> dict[str, tuple]:
    """The metadata fields of a GGUF file whose key starts with `prefix`, as (value, type, item type)."""
    from .gguf import _open

    out = {}
    for key, f in _open(path).fields.items():
        if key.startswith(prefix):
            out[key] = (f.contents(), f.types[0], f.types[1] if len(f.types) > 1 else None)
    return out


def encode_tensors(model: nn.Module, quant: str) -> Iterator[tuple[str, np.ndarray, GGMLQuantizationType, bool]]:
    """(GGUF name, array for GGUFWriter, GGUF type, copied from quantized codes) for every tensor of
    the file, in llama.cpp's order, one at a time. quant: one of WRITE_TYPES."""
    for gguf_name, param, rows in _planned(model, model.config):
        yield (gguf_name, *_encode(gguf_name, _source(model, param), rows, quant))
    freqs = _rope_freqs(model.config)
    if freqs is not None:
        yield _ROPE_FREQS, freqs, Q.F32, False


# -- writing ------------------------------------------------------------------------------------------
def write_gguf(model: nn.Module, tokenizer, path: str | os.PathLike, quant: str | None = None, name: str = "model",
               tokenizer_fields: dict[str, tuple] | None = None, overwrite: bool = False) -> GGUFWriteSummary:
    """Write `model` (a Decoder, float or holding QuantLinears) and its tokenizer as a Llama GGUF at
    `path`, atomically. quant: one of WRITE_TYPES, or None (see `resolve_quant`). tokenizer_fields:
    `tokenizer.*` metadata to copy as is (from a GGUF source); None builds it from `tokenizer`.
    The model is only read."""
    path = Path(path)
    cfg = model.config
    problems = export_problems(cfg)
    if problems:
        raise CheckpointError(f"this model cannot be written as a llama.cpp Llama GGUF: {'; '.join(problems)}")
    if path.exists() and (path.is_dir() or not overwrite):
        raise CheckpointError(f"{path} exists (use --overwrite to replace it)" if not path.is_dir()
                              else f"{path} is a directory")
    quant = resolve_quant(model, quant)
    fields = tokenizer_fields if tokenizer_fields is not None else gguf_tokenizer_fields(tokenizer, cfg.vocab_size)
    summary = GGUFWriteSummary(path, quant)
    tensors = []  # everything is encoded (and checked) before the file is opened
    for gguf_name, array, qtype, copied in encode_tensors(model, quant):
        tensors.append((gguf_name, array, qtype))
        summary.copied_blocks += copied
    for _, _, qtype in tensors:
        summary.tensor_types[qtype.name] = summary.tensor_types.get(qtype.name, 0) + 1
    file_type = {**FLOAT_TYPES, **QUANT_TYPES}[quant]
    with atomic_path(path) as tmp:
        w = GGUFWriter(str(tmp), "llama")
        _add_hparams(w, cfg, name, file_type)
        for key, (value, vtype, sub) in fields.items():
            w.add_key_value(key, value, vtype, sub)
        for gguf_name, array, qtype in tensors:
            w.add_tensor(gguf_name, array, raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    summary.bytes = path.stat().st_size
    return summary
