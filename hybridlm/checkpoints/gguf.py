"""GGUF checkpoints (llama.cpp's format) in: read, dequantize, translate names.

`gguf.GGUFReader` parses the header and memory-maps the tensor data; everything after that is ours:
the dequantizers follow ggml's block layouts (ggml-quants.c) and are pinned bit for bit against
`gguf.quants.dequantize` in the tests, and the name table below is the only place in hybridlm that
knows a GGUF tensor name.

Only the Llama architecture is read. llama.cpp's converter permutes the rows of Q and K so that
RoPE rotates interleaved pairs (x_2i, x_2i+1); our RoPE rotates halves (x_i, x_i+D/2), as HF does,
so those rows are permuted back while they are written (the inverse of `permute` in llama.cpp's
convert_hf_to_gguf.py, as transformers' GGUF loader does).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from torch.overrides import TorchFunctionMode

from ..config import ConfigError, ModelConfig
from ..models.decoder import Decoder
from ..nn.positions import rope_inv_freq
from ..tokenizer import Tokenizer, TokenizerError
from .errors import CheckpointError

Q = GGMLQuantizationType
SUPPORTED_ARCHITECTURE = "llama"

# -- names: GGUF tensor -> our state dict ----------------------------------------------------------
_GLOBAL_NAMES = {
    "token_embd.weight": "embed.weight",
    "output_norm.weight": "final_norm.weight",
    "output.weight": "lm_head.weight",
}
# per layer i: (our block 2i + offset, our parameter, band of rows in a fused parameter)
_LAYER_NAMES = {
    "attn_norm.weight": (0, "norm.weight", None),
    "attn_q.weight": (0, "mixer.wqkv.weight", "q"),
    "attn_k.weight": (0, "mixer.wqkv.weight", "k"),
    "attn_v.weight": (0, "mixer.wqkv.weight", "v"),
    "attn_output.weight": (0, "mixer.wo.weight", None),
    "ffn_norm.weight": (1, "norm.weight", None),
    "ffn_gate.weight": (1, "mixer.w_in.weight", "gate"),
    "ffn_up.weight": (1, "mixer.w_in.weight", "up"),
    "ffn_down.weight": (1, "mixer.w_out.weight", None),
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")
_ROPE_FREQS = "rope_freqs.weight"  # Llama 3.1 frequency factors; folded into the config


def _bands(cfg: ModelConfig) -> dict[str, tuple[int, int, int | None]]:
    """Row band of each fused part: (first row, end row, heads whose rows to un-permute)."""
    q, kv, ff = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.d_ff
    return {"q": (0, q, cfg.n_heads), "k": (q, q + kv, cfg.n_kv_heads), "v": (q + kv, q + 2 * kv, None),
            "gate": (0, ff, None), "up": (ff, 2 * ff, None)}


def _target(name: str, cfg: ModelConfig) -> tuple[str, tuple[int, int, int | None] | None]:
    """Our parameter and row band (or None: all of it) for a GGUF tensor name `_plan` accepted."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name], None
    layer, suffix = _LAYER_RE.fullmatch(name).groups()
    offset, param, band = _LAYER_NAMES[suffix]
    return f"blocks.{2 * int(layer) + offset}.{param}", (_bands(cfg)[band] if band else None)


# -- dequantizers: uint8 blocks (..., type_size) -> float32 out (..., block_size), in place --------
# Each follows the block struct of ggml-quants.h and does its float math in the same order as
# gguf.quants, so the results agree bit for bit. They are numpy rather than torch on purpose: numpy
# runs each op on the calling thread, so the loader decodes tensors on a thread pool; torch's
# OpenMP regions (~2,000 of them for one model) stall for whole scheduler slices whenever another
# process holds a core, which made loading 3-10x slower on a busy 2-core machine.
def _f16(b: np.ndarray) -> np.ndarray:
    return b.view(np.float16).astype(np.float32)  # (..., 2) bytes -> (..., 1)


def _split_last(a: np.ndarray, *shape: int) -> np.ndarray:
    """A view of `a` with its last axis split into `shape` (never a copy: we write through it)."""
    view = a.view()
    view.shape = a.shape[:-1] + shape
    return view


def _q8_0(b, out):  # {f16 d; int8 q[32]}: x = d * q
    np.multiply(b[..., 2:].view(np.int8), _f16(b[..., :2]), out=out)


def _q4_0(b, out):  # {f16 d; u8 qs[16]}: x = d * (nibble - 8); low nibbles are x[:16], high x[16:]
    d, qs = _f16(b[..., :2]), b[..., 2:]
    np.multiply((qs & 0x0F).view(np.int8) - np.int8(8), d, out=out[..., :16])
    np.multiply((qs >> 4).view(np.int8) - np.int8(8), d, out=out[..., 16:])


def _q4_1(b, out):  # {f16 d, m; u8 qs[16]}: x = d * nibble + m
    d, qs = _f16(b[..., :2]), b[..., 4:]
    np.multiply(qs & 0x0F, d, out=out[..., :16])
    np.multiply(qs >> 4, d, out=out[..., 16:])
    out += _f16(b[..., 2:4])


def _k_scale_min(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit (scale, min) pairs packed in 12 bytes (get_scale_min_k4). -> (..., 8) each"""
    s = _split_last(s, 3, 4)
    lo, hi, mix = s[..., 0, :], s[..., 1, :], s[..., 2, :]
    scale = np.concatenate((lo & 63, (mix & 15) | ((lo >> 2) & 48)), axis=-1)
    minimum = np.concatenate((hi & 63, (mix >> 4) | ((hi >> 2) & 48)), axis=-1)
    return scale, minimum


def _q4_k(b, out):  # {f16 d, dmin; u8 scales[12], qs[128]}: 8 sub-blocks of 32, x = d*sc*q - dmin*m
    scale, minimum = _k_scale_min(b[..., 4:16])
    d = _f16(b[..., 0:2]) * scale.astype(np.float32)  # (..., 8)
    qs = _split_last(b[..., 16:], 4, 32)  # chunk j: low nibbles are sub-block 2j, high ones 2j+1
    pairs = _split_last(out, 4, 2, 32)
    np.multiply(qs & 0x0F, d[..., 0::2, None], out=pairs[..., 0, :])
    np.multiply(qs >> 4, d[..., 1::2, None], out=pairs[..., 1, :])
    _split_last(out, 8, 32)[...] -= (_f16(b[..., 2:4]) * minimum.astype(np.float32))[..., None]


_Q6_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]


def _q6_k(b, out):  # {u8 ql[128], qh[64]; int8 scales[16]; f16 d}: 16 sub-blocks of 16, x = d*sc*(q - 32)
    ql = _split_last(b[..., :128], 2, 2, 32)  # (half, j, l): low 4 bits
    qh = _split_last(b[..., 128:192], 2, 1, 32)  # (half, 1, l): 2 high bits for each quarter
    low = np.concatenate((ql & 0x0F, ql >> 4), axis=-2)  # quarters of a half: ql0 lo, ql1 lo, ql0 hi, ql1 hi
    q = (low | (((qh >> _Q6_SHIFTS) & 3) << 4)).view(np.int8) - np.int8(32)  # (..., 2, 4, 32)
    d = _f16(b[..., 208:210]) * b[..., 192:208].view(np.int8).astype(np.float32)  # (..., 16)
    np.multiply(q.reshape(*q.shape[:-3], 16, 16), d[..., None], out=_split_last(out, 16, 16))


def _bf16(raw: np.ndarray) -> np.ndarray:
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


_FLOATS = {Q.F32: lambda raw: raw.view(np.float32), Q.F16: lambda raw: raw.view(np.float16), Q.BF16: _bf16}
_DEQUANTIZERS: dict[GGMLQuantizationType, Callable[[np.ndarray, np.ndarray], None]] = {
    Q.Q8_0: _q8_0, Q.Q4_0: _q4_0, Q.Q4_1: _q4_1, Q.Q4_K: _q4_k, Q.Q6_K: _q6_k,
}
SUPPORTED_TYPES = tuple(t.name for t in (*_FLOATS, *_DEQUANTIZERS))


def dequantize_into(raw: np.ndarray, qtype: GGMLQuantizationType, out: np.ndarray) -> None:
    """Decode GGUF bytes into `out` (mutated).

    raw: uint8 (R, bytes per row), the rows as the file stores them. out: float32 (..., C) holding
    R rows in its leading dims, which may have any strides (its last axis must be contiguous).
    """
    if qtype in _FLOATS:
        np.copyto(out, _FLOATS[qtype](raw).reshape(out.shape))
        return
    block, size = GGML_QUANT_SIZES[qtype]
    blocks = raw.reshape(*out.shape[:-1], out.shape[-1] // block, size)
    _DEQUANTIZERS[qtype](blocks, _split_last(out, out.shape[-1] // block, block))


def _check_type(qtype: GGMLQuantizationType, where: str) -> None:
    if qtype not in _FLOATS and qtype not in _DEQUANTIZERS:
        raise CheckpointError(f"{where} has GGUF type {qtype.name}, which hybridlm cannot dequantize "
                              f"(supported: {', '.join(SUPPORTED_TYPES)})")


def dequantize(data: np.ndarray, qtype: GGMLQuantizationType | int | str) -> np.ndarray:
    """GGUF bytes (..., bytes per row) -> float32 (..., values per row); same contract as gguf.quants.dequantize."""
    qtype = Q[qtype] if isinstance(qtype, str) else Q(qtype)
    _check_type(qtype, "this tensor")
    raw = np.ascontiguousarray(data).view(np.uint8)
    block, size = GGML_QUANT_SIZES[qtype]
    out = np.empty((*raw.shape[:-1], raw.shape[-1] // size * block), dtype=np.float32)
    dequantize_into(raw, qtype, out)
    return out


# -- reading -------------------------------------------------------------------------------------
class _Reader(GGUFReader):
    """GGUFReader over a plain ndarray view of its memory map.

    np.memmap runs Python code (__array_finalize__) on every slice, and the reader slices about
    250k times for a 49k-token vocabulary: 1.4 s of the 2 s it takes to open SmolLM2. A plain view
    of the same mapping reads the same bytes without it.
    """

    @property
    def data(self) -> np.ndarray:
        return self._plain

    @data.setter
    def data(self, value: np.memmap) -> None:
        self._plain = value.view(np.ndarray)


def _open(path: str | os.PathLike) -> _Reader:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        reader = _Reader(path)
    except Exception as e:  # the reader's own errors on bad bytes are ValueError, IndexError, KeyError...
        raise CheckpointError(f"{path} is a truncated or corrupt GGUF file ({type(e).__name__}: {e})") from e
    if reader.byte_order != "I":
        raise CheckpointError(f"{path} is a big-endian GGUF file; only little-endian files are supported")
    return reader


def _metadata(reader: GGUFReader) -> dict[str, Any]:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _float32(x: float) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(x)))


def _config(meta: dict[str, Any], tensors: dict[str, Any], path: Path) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch != SUPPORTED_ARCHITECTURE:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported; hybridlm reads "
                              f"{SUPPORTED_ARCHITECTURE!r} GGUF files")

    def key(name: str, default: Any = KeyError) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is KeyError:
            raise CheckpointError(f"{path}: GGUF metadata lacks {arch}.{name}")
        return value

    n_heads, n_kv = key("attention.head_count"), key("attention.head_count_kv", None)
    if isinstance(n_kv, list):  # per-layer counts; we support one count for all layers
        if len(set(n_kv)) != 1:
            raise CheckpointError(f"{path}: per-layer KV head counts {sorted(set(n_kv))} are not supported")
        n_kv = n_kv[0]
    d_model = key("embedding_length")
    head_dim = key("attention.key_length", d_model // n_heads)
    if key("rope.dimension_count", head_dim) != head_dim:
        raise CheckpointError(f"{path}: partial rotary embeddings (rope.dimension_count "
                              f"{key('rope.dimension_count')} < head dim {head_dim}) are not supported")
    tokens = meta.get("tokenizer.ggml.tokens")
    fields = dict(
        vocab_size=len(tokens) if tokens else key("vocab_size", None) or int(tensors["token_embd.weight"].shape[-1]),
        d_model=d_model, n_layers=key("block_count"), n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
        d_ff=key("feed_forward_length"), max_seq_len=key("context_length", 2048),
        position="rope", rope_theta=_float32(key("rope.freq_base", 10000.0)), mlp="swiglu", norm="rmsnorm",
        norm_eps=_float32(key("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in tensors,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
    )
    fields.update(_rope_scaling(key, tensors, path))
    try:
        return ModelConfig(**fields)
    except ConfigError as e:
        raise CheckpointError(f"{path}: GGUF metadata describes an invalid model ({e})") from e


def _rope_scaling(key: Callable, tensors: dict[str, Any], path: Path) -> dict[str, Any]:
    kind = key("rope.scaling.type", None)
    factor = key("rope.scaling.factor", None) or key("rope.scale_linear", None)
    if kind in (None, "none") and factor is not None and factor != 1.0:
        kind = "linear"  # older files have only rope.scale_linear
    if kind == "linear":
        return {"rope_scaling": "linear", "rope_factor": _float32(factor)}
    if kind not in (None, "none"):
        raise CheckpointError(f"{path}: RoPE scaling {kind!r} is not supported (none, linear, llama3)")
    if _ROPE_FREQS not in tensors:
        return {}
    # Llama 3.1 files store the per-frequency divisors instead of the scaling parameters. Recover
    # the standard parameters and check they reproduce the stored divisors exactly enough.
    divisors = torch.from_numpy(np.array(tensors[_ROPE_FREQS].data, dtype=np.float32))
    scaling = {"rope_scaling": "llama3", "rope_factor": _float32(divisors.max().item()),
               "rope_low_freq_factor": 1.0, "rope_high_freq_factor": 4.0,
               "rope_original_max_seq_len": key("rope.scaling.original_context_length", 8192)}
    base = ModelConfig(d_model=key("embedding_length"), n_heads=key("attention.head_count"),
                       head_dim=divisors.numel() * 2, rope_theta=key("rope.freq_base", 10000.0))
    implied = rope_inv_freq(base) / rope_inv_freq(base.replace(**scaling))
    if not torch.allclose(implied, divisors, rtol=1e-3):
        raise CheckpointError(f"{path}: the rope_freqs tensor is not Llama 3 frequency scaling with "
                              f"factor {scaling['rope_factor']}, low 1, high 4; it is not supported")
    return scaling


def read_gguf_config(path: str | os.PathLike) -> ModelConfig:
    """The `ModelConfig` of a Llama GGUF file, from its metadata (and which tensors it has)."""
    reader = _open(path)
    return _config(_metadata(reader), {t.name: t for t in reader.tensors}, Path(path))


def _tokenizer(meta: dict[str, Any], path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_gguf_fields(meta)
    except TokenizerError as e:
        raise CheckpointError(f"{path}: {e}") from e


def read_gguf_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer a GGUF file describes in its metadata (no weights are read)."""
    return _tokenizer(_metadata(_open(path)), Path(path))


# -- loading -------------------------------------------------------------------------------------
class _SkipInit(TorchFunctionMode):
    """Build a model without its random initialisation: every weight is overwritten from the file.

    Initialising 135M parameters costs about a second; building on the meta device instead imports
    torch._dynamo (another second) for the meta versions of normal_/uniform_. Tensors are still
    allocated for real (untouched pages cost nothing) and derived buffers such as RoPE
    frequencies are computed as usual.
    """

    SKIPPED = {"normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
               "xavier_uniform_", "xavier_normal_", "zero_", "zeros_"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in self.SKIPPED:
            target = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes tensor=...
            if isinstance(target, torch.nn.Parameter):  # buffers are derived, never skipped
                return target
        return func(*args, **kwargs)


class _Job(NamedTuple):
    """One GGUF tensor and where it goes."""

    raw: np.ndarray  # uint8 (rows, bytes per row) as the file stores them
    qtype: GGMLQuantizationType
    dest: torch.Tensor  # the float destination (a view of the parameter: its band, rows un-permuted)
    param: str  # our parameter name
    band: tuple[int, int, int | None] | None  # rows of a fused parameter (first, end, heads to un-permute)


def _plan(state: dict[str, torch.Tensor], reader: GGUFReader, cfg: ModelConfig, path: Path) -> list[_Job]:
    """Every tensor and its destination, each checked before anything is decoded."""
    expected = {f"blk.{i}.{suffix}" for i in range(cfg.n_layers) for suffix in _LAYER_NAMES}
    expected |= {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} if not cfg.tie_embeddings else set())
    present = {t.name for t in reader.tensors}
    missing, unexpected = sorted(expected - present), sorted(present - expected - {_ROPE_FREQS})
    if missing or unexpected:
        problem = f"lacks tensors {missing[:4]}" if missing else f"has tensors hybridlm cannot place {unexpected[:4]}"
        raise CheckpointError(f"{path}: this Llama GGUF {problem}")
    jobs, written = [], {}
    for t in reader.tensors:
        if t.name == _ROPE_FREQS:
            continue
        _check_type(t.tensor_type, f"{path}: tensor {t.name}")
        name, band = _target(t.name, cfg)
        dest = state[name] if band is None else state[name][band[0]:band[1]]
        shape = tuple(reversed([int(d) for d in t.shape]))  # GGUF lists the fastest-moving dim first
        if shape != tuple(dest.shape):
            raise CheckpointError(f"{path}: tensor {t.name} has shape {list(shape)}, expected {list(dest.shape)}")
        if band is not None and band[2] is not None:
            heads = band[2]  # file row (h, i, j) holds our row (h, j, i), for (heads, D/2, 2)
            dest = dest.view(heads, 2, shape[0] // heads // 2, shape[1]).transpose(1, 2)
        raw = t.data.view(np.uint8).reshape(shape[0] if len(shape) > 1 else 1, -1)
        jobs.append(_Job(raw, t.tensor_type, dest, name, band))
        written[name] = written.get(name, 0) + dest.numel()
    # the model is built uninitialised, so every element of every parameter must come from the file
    unfilled = [name for name, p in state.items() if written.get(name, 0) != p.numel()]
    if unfilled:
        raise CheckpointError(f"{path}: nothing in this GGUF fills {unfilled[:4]}")
    return jobs


def _decode(raw: np.ndarray, qtype: GGMLQuantizationType, dest: torch.Tensor) -> None:
    if dest.dtype == torch.float32 and dest.device.type == "cpu":
        dequantize_into(raw, qtype, dest.numpy())  # straight into the parameter's memory
    else:
        out = np.empty(dest.shape, dtype=np.float32)
        dequantize_into(raw, qtype, out)
        dest.copy_(torch.from_numpy(out))


def _fill(jobs: list[_Job]) -> None:
    """Decode every tensor into its destination; numpy releases the GIL, so tensors decode in parallel."""
    jobs = sorted(jobs, key=lambda job: -job.raw.size)  # largest first balances the threads
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for future in [pool.submit(_decode, job.raw, job.qtype, job.dest) for job in jobs]:
            future.result()


# linears whose GGUF blocks can stay quantized: attention and MLP projections and the LM head
_QUANTIZABLE = re.compile(r"(blocks\.\d+\.mixer\.(wqkv|wo|w_in|w_out)|lm_head)\.weight")


def _keep_quantized(model: Decoder, jobs: list[_Job], cfg: ModelConfig) -> list[_Job]:
    """Swap in a QuantLinear for every linear whose GGUF blocks convert to one quantized format
    (gguf_quantized.py); returns the jobs still to dequantize. A tied LM head is quantized from
    the embedding's blocks, and the embedding lookup keeps its float table."""
    from ..nn.quant import QuantLinear
    from .gguf_quantized import concat_rows, permute_rows, to_quantized

    by_param: dict[str, list[_Job]] = {}
    for job in jobs:
        if _QUANTIZABLE.fullmatch(job.param):
            by_param.setdefault(job.param, []).append(job)
    if cfg.tie_embeddings:
        by_param["lm_head.weight"] = [job for job in jobs if job.param == "embed.weight"]
    kept: set[int] = set()
    for param, parts in by_param.items():
        parts = sorted(parts, key=lambda job: job.band[0] if job.band else 0)
        weights = []
        for job in parts:
            raw = job.raw if not job.band or job.band[2] is None else permute_rows(job.raw, job.band[2])
            weights.append(to_quantized(raw, job.qtype))
        weight = None if None in weights else concat_rows(weights)
        if weight is None:
            continue  # a type that is not kept, or parts that cannot share one format: float
        parent, _, child = param[: -len(".weight")].rpartition(".")
        model.get_submodule(parent).register_module(child, QuantLinear(weight))
        if param != "lm_head.weight" or not cfg.tie_embeddings:
            kept.update(id(job) for job in parts)
    return [job for job in jobs if id(job) not in kept]


def load_gguf(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu", keep_quantized: bool = False) -> tuple[Decoder, Tokenizer]:
    """Load a Llama GGUF file as (Decoder in eval mode, Tokenizer).

    keep_quantized False: every weight is dequantized to `dtype`. True: the linears stored as Q4_0,
    Q4_1, Q8_0 or Q4_K become QuantLinear modules holding those blocks (gguf_quantized.py; their
    activation mode is QuantLinear's default, exact), everything else is dequantized to `dtype`.
    """
    path = Path(path)
    reader = _open(path)
    meta = _metadata(reader)
    cfg = _config(meta, {t.name: t for t in reader.tensors}, path)
    tokenizer = _tokenizer(meta, path)
    with torch.device(device), _SkipInit():
        model = Decoder(cfg)
    if dtype != torch.float32:  # parameters only: RoPE frequencies stay float32
        for p in model.parameters():
            p.data = torch.empty_like(p, dtype=dtype)
    params = {name: p.detach() for name, p in model.named_parameters()}  # a tied head is listed once
    jobs = _plan(params, reader, cfg, path)
    if keep_quantized:
        jobs = _keep_quantized(model, jobs, cfg)
    _fill(jobs)
    return model.eval(), tokenizer
