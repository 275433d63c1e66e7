"""GGUF blocks kept quantized: llama.cpp's Q4_0, Q4_1, Q8_0 and Q4_K rows as `QuantizedWeight`s.

The loader (gguf.py, `keep_quantized=True`) hands each linear's raw rows here instead of
dequantizing them. Q4_0, Q4_1 and Q8_0 blocks ARE hybridlm's int4 sym / int4 asym / int8 formats at
group 32 (nn/quant/formats.py stores nibbles in llama.cpp's order), so their bytes are split into
codes, scales and offsets as they are. Q4_K super-blocks (256 inputs, 8 sub-blocks of 32 with
6-bit scales and mins) become int4 asymmetric at group 32 with float32 scales d * sc and offsets
-dmin * m: the values the dequantizer computes, bit for bit; their nibbles are re-packed from
K-quant order (sub-blocks 2j and 2j + 1 share 32 bytes) into ours. Other types (Q6_K, F16...) are
not kept: their linears are dequantized to float as before, and `describe` says so.

Fused parameters (q/k/v -> wqkv, gate/up -> w_in) are concatenated row bands; they stay quantized
when all their parts convert to one format (int4 sym and asym mix as asym, with offsets -8 s).
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..nn.quant import QuantizedWeight, pack_int4

Q = GGMLQuantizationType
KEPT_TYPES = (Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K)
GROUP = 32


def _f16(b: np.ndarray) -> torch.Tensor:
    """(..., 2) bytes -> float16 (...)"""
    return torch.from_numpy(np.ascontiguousarray(b).view(np.float16)[..., 0])


def _q4_k(blocks: np.ndarray, rows: int) -> QuantizedWeight:
    from .gguf import _f16 as f16_as_f32, _k_scale_min

    sc, mn = _k_scale_min(blocks[..., 4:16])  # (rows, nb, 8) each
    d = f16_as_f32(blocks[..., 0:2]) * sc.astype(np.float32)  # as the dequantizer: d * sc in float32
    m = -(f16_as_f32(blocks[..., 2:4]) * mn.astype(np.float32))
    qs = blocks[..., 16:].reshape(rows, -1, 4, 32)  # chunk j of 32 bytes: sub-block 2j low, 2j + 1 high
    codes = np.stack((qs & 0x0F, qs >> 4), axis=3).reshape(rows, -1)  # inputs in order
    k = codes.shape[1]
    return QuantizedWeight("int4", pack_int4(torch.from_numpy(codes)), torch.from_numpy(d.reshape(rows, k // GROUP)),
                           GROUP, k, torch.from_numpy(m.reshape(rows, k // GROUP)))


def to_quantized(raw: np.ndarray, qtype: GGMLQuantizationType) -> QuantizedWeight | None:
    """GGUF rows (rows, bytes per row) uint8 -> QuantizedWeight, or None for types not kept."""
    if qtype not in KEPT_TYPES:
        return None
    block, size = GGML_QUANT_SIZES[qtype]
    rows = raw.shape[0]
    b = raw.reshape(rows, -1, size)  # (rows, blocks, bytes)
    k = b.shape[1] * block
    if qtype == Q.Q4_K:
        return _q4_k(b, rows)
    scales = _f16(b[..., 0:2])
    if qtype == Q.Q8_0:
        codes = torch.from_numpy(np.ascontiguousarray(b[..., 2:]).view(np.int8).reshape(rows, k))
        return QuantizedWeight("int8", codes, scales, GROUP, k)
    first = 2 if qtype == Q.Q4_0 else 4
    codes = torch.from_numpy(np.ascontiguousarray(b[..., first:]).reshape(rows, k // 2))
    offsets = _f16(b[..., 2:4]) if qtype == Q.Q4_1 else None
    return QuantizedWeight("int4", codes, scales, GROUP, k, offsets)


def concat_rows(parts: list[QuantizedWeight]) -> QuantizedWeight | None:
    """Row bands of one fused weight, in order, as one QuantizedWeight (None if they cannot share
    a format: int8 with int4, say)."""
    if len({(p.fmt, p.group_size, p.in_features) for p in parts}) != 1:
        return None
    dtype = torch.float32 if any(p.scales.dtype == torch.float32 for p in parts) else torch.float16
    asym = any(p.offsets is not None for p in parts)
    scales, offsets = [], []
    for p in parts:
        s = p.scales.to(dtype)
        scales.append(s)
        if asym:  # s * (q - 8) = s * q + (-8 s): exact in float16/32, the scale being a power-of-two multiple
            offsets.append(p.offsets.to(dtype) if p.offsets is not None else -8 * s)
    first = parts[0]
    return QuantizedWeight(first.fmt, _cat([p.codes for p in parts]), _cat(scales), first.group_size,
                           first.in_features, _cat(offsets) if asym else None)


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat through numpy: on the calling thread (the loader decodes on a thread pool, and small
    OpenMP copies stall when another process holds a core; see gguf.py)."""
    if len(tensors) == 1:
        return tensors[0]
    return torch.from_numpy(np.concatenate([t.numpy() for t in tensors]))


def permute_rows(raw: np.ndarray, heads: int) -> np.ndarray:
    """File rows (h, i, j) of a Q or K projection, (heads, D/2, 2), in our RoPE order (h, j, i)."""
    r = raw.shape[0]
    return raw.reshape(heads, r // heads // 2, 2, -1).transpose(0, 2, 1, 3).reshape(r, -1)
