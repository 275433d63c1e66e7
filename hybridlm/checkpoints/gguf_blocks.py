"""llama.cpp's Q8_0, Q4_0 and Q4_1 blocks out: the inverse of the dequantizers in gguf.py.

Two ways in, one way out:
- a float weight is rounded into blocks exactly as ggml's reference quantizers do it
  (`quantize_row_q8_0_ref`, `..._q4_0_ref`, `..._q4_1_ref` in ggml-quants.c), giving a
  `QuantizedWeight` at group 32;
- a `QuantizedWeight` a quantizer made (RTN, GPTQ, AWQ at group 32) is already a run of GGUF blocks:
  int8 is Q8_0, symmetric int4 is Q4_0, asymmetric int4 is Q4_1 (nn/quant/formats.py stores the
  nibbles in llama.cpp's order), so its codes and float16 scales are copied byte for byte.

`to_gguf_blocks` then lays out each block as ggml's structs do:

    Q8_0  { f16 d;        int8 qs[32] }   x = d * q
    Q4_0  { f16 d;        u8   qs[16] }   x = d * (nibble - 8)      byte j = x[j] | x[j + 16] << 4
    Q4_1  { f16 d, m;     u8   qs[16] }   x = d * nibble + m
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType

from ..nn.quant import QuantizedWeight, pack_int4
from .errors import CheckpointError

Q = GGMLQuantizationType
BLOCK = 32  # inputs per block of every type here
QUANT_TYPES = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1}
FLOAT_TYPES = {"f32": Q.F32, "f16": Q.F16}


def _blocks(w: torch.Tensor) -> torch.Tensor:
    """(out, in) -> float32 (out, in // 32, 32); in must be a multiple of 32."""
    if w.dim() != 2 or w.shape[1] % BLOCK:
        raise CheckpointError(f"a weight of shape {tuple(w.shape)} does not split into GGUF blocks of {BLOCK} inputs")
    return w.detach().float().reshape(w.shape[0], -1, BLOCK)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """1 / d in float32, 0 where d is 0 (an all-zero block), as ggml's `id = d ? 1.0f/d : 0.0f`."""
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / torch.where(d == 0, torch.ones_like(d), d))


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C's roundf: halves away from zero. Written with the exact fraction: floor(|x| + 0.5) rounds
    0.49999997 up in float32 (the sum is not representable)."""
    a = x.abs()
    whole = a.floor()
    return torch.sign(x) * (whole + (a - whole >= 0.5).float())


def quantize_q8_0(w: torch.Tensor) -> QuantizedWeight:
    """w (out, in) -> int8 at group 32, ggml's rounding: d = absmax / 127, q = roundf(x / d)."""
    b = _blocks(w)
    d = b.abs().amax(-1, keepdim=True) / 127
    q = _roundf(b * _inverse(d))
    return QuantizedWeight("int8", q.to(torch.int8).reshape(w.shape), d[..., 0].half(), BLOCK, w.shape[1])


def quantize_q4_0(w: torch.Tensor) -> QuantizedWeight:
    """w (out, in) -> symmetric int4 at group 32, ggml's rounding: the signed value of largest
    magnitude maps to -8 exactly (d = max / -8, which may be negative), q = min(15, trunc(x / d + 8.5))."""
    b = _blocks(w)
    first_max = b.abs().argmax(-1, keepdim=True)  # the first of equal magnitudes, as ggml's strict <
    d = torch.gather(b, -1, first_max) / -8
    q = torch.trunc(b * _inverse(d) + 8.5).clamp(max=15)  # x / d >= -8 up to rounding, so >= 0.5 before trunc
    return QuantizedWeight("int4", pack_int4(q.to(torch.uint8).reshape(w.shape)), d[..., 0].half(), BLOCK, w.shape[1])


def quantize_q4_1(w: torch.Tensor) -> QuantizedWeight:
    """w (out, in) -> asymmetric int4 at group 32, ggml's rounding: m = min, d = (max - min) / 15,
    q = min(15, trunc((x - m) / d + 0.5))."""
    b = _blocks(w)
    lo, hi = b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)
    d = (hi - lo) / 15
    q = torch.trunc((b - lo) * _inverse(d) + 0.5).clamp(max=15)
    return QuantizedWeight("int4", pack_int4(q.to(torch.uint8).reshape(w.shape)), d[..., 0].half(), BLOCK,
                           w.shape[1], offsets=lo[..., 0].half())


QUANTIZERS = {Q.Q8_0: quantize_q8_0, Q.Q4_0: quantize_q4_0, Q.Q4_1: quantize_q4_1}


def gguf_type_of(w: QuantizedWeight, where: str = "this weight") -> GGMLQuantizationType:
    """The GGUF block type a QuantizedWeight is, bit for bit; CheckpointError when it is none."""
    if w.fmt not in ("int4", "int8"):
        raise CheckpointError(f"{where} is {w.fmt}, which has no GGUF block type (Q8_0/Q4_0/Q4_1 hold int8/int4)")
    if w.group_size != BLOCK:
        raise CheckpointError(f"{where} has group size {w.group_size}; GGUF Q8_0/Q4_0/Q4_1 blocks are groups of "
                              f"{BLOCK} (quantize with --group-size {BLOCK})")
    for name in ("scales", "offsets"):
        t = getattr(w, name)
        if t is not None and t.dtype != torch.float16 and not torch.equal(t.half().float(), t.float()):
            raise CheckpointError(f"{where} has float32 {name} that float16 cannot hold exactly; GGUF blocks store float16")
    if w.fmt == "int8":
        return Q.Q8_0
    return Q.Q4_0 if w.offsets is None else Q.Q4_1


def _f16_bytes(t: torch.Tensor) -> torch.Tensor:
    """float (out, blocks) -> uint8 (out, blocks, 2): little-endian float16 bytes."""
    return t.detach().cpu().half().contiguous().view(torch.uint8).reshape(*t.shape, 2)


def to_gguf_blocks(w: QuantizedWeight, where: str = "this weight") -> tuple[np.ndarray, GGMLQuantizationType]:
    """A QuantizedWeight (out, in) -> (uint8 (out, bytes per row) of GGUF blocks, their type).
    Nothing is rounded: the codes and float16 scales are laid out as ggml's block structs."""
    qtype = gguf_type_of(w, where)
    out, n_blocks = w.out_features, w.in_features // BLOCK
    codes = w.codes.detach().cpu().contiguous()
    if qtype == Q.Q8_0:
        parts = [_f16_bytes(w.scales), codes.view(torch.uint8).reshape(out, n_blocks, BLOCK)]
    else:  # the packed nibbles of a 32-run are already the 16 bytes of qs
        parts = [_f16_bytes(w.scales)] + ([_f16_bytes(w.offsets)] if qtype == Q.Q4_1 else [])
        parts.append(codes.reshape(out, n_blocks, BLOCK // 2))
    return torch.cat(parts, dim=-1).reshape(out, -1).numpy(), qtype


def rows_of(w: QuantizedWeight, rows: torch.Tensor) -> QuantizedWeight:
    """The QuantizedWeight of the given output rows (int64 indices), in that order. Blocks run
    along the inputs, so taking or permuting rows keeps every block whole."""
    pick = (lambda t: None if t is None else t[rows])
    return QuantizedWeight(w.fmt, w.codes[rows], w.scales[rows], w.group_size, w.in_features,
                           pick(w.offsets), w.lut)
