"""INT4 / INT8 weight-only matmul in Triton, dequantizing inside the kernel (the GPU twin of
qmatmul.cpp's exact mode).

y = x W^T + b with W stored as nn/quant/formats.py lays it out, read as stored:
  int4  codes uint8 (N, K/2), two per byte in llama.cpp's order (within each run of 32 inputs byte j
        holds input j in its low nibble and input j + 16 in its high one); W = s (q - 8), or
        W = s q + m with offsets (Q4_0 / Q4_1 at group 32; any multiple of 32)
  int8  codes int8 (N, K); W = s q (Q8_0 at group 32)
scales (and offsets) float16/float32 (N, K / group).

Each program owns a (BLOCK_M, BLOCK_N) output tile and walks K in BLOCK_K = 32-input steps: it
loads the packed bytes of its BLOCK_N rows, picks each input's nibble (byte = run * 16 + j % 16,
shift 4 * (j // 16)), applies the group's scale (and offset) in registers and feeds the float tile
to tl.dot. The float weight never reaches memory: a decode step reads 4.5 (int4) or 8.5 (int8)
bits per weight instead of 16. The twin is `nn/quant/linear.py`'s `quant_linear_ref`
(dequantize the whole weight, then F.linear); tests pin them.
"""

from __future__ import annotations

import torch

from . import triton_support

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = tl = None

FORMATS = ("int4", "int8")


if triton is not None:

    @triton.jit
    def _qmatmul(X, CODES, SCALES, OFFSETS, BIAS, Y, M, N, K, group_size,
                 sxm, scn, ssn, sym,
                 INT4: tl.constexpr, HAS_OFFSETS: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        kk = tl.arange(0, BLOCK_K)
        row_ok = rows < M
        col_ok = cols < N
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(X + rows[:, None] * sxm + k0 + kk[None, :], mask=row_ok[:, None], other=0.0)
            if INT4:
                # input k0 + j of a run of 32: byte run * 16 + j % 16, high nibble for j % 32 >= 16
                byte = k0 // 2 + (kk // 32) * 16 + kk % 16
                packed = tl.load(CODES + cols[:, None] * scn + byte[None, :], mask=col_ok[:, None], other=0)
                q = ((packed.to(tl.int32) >> (4 * ((kk[None, :] % 32) // 16))) & 0xF).to(tl.float32)
            else:
                q = tl.load(CODES + cols[:, None] * scn + k0 + kk[None, :], mask=col_ok[:, None], other=0).to(tl.float32)
            group = (k0 + kk) // group_size
            s = tl.load(SCALES + cols[:, None] * ssn + group[None, :], mask=col_ok[:, None], other=0.0).to(tl.float32)
            if HAS_OFFSETS:
                m = tl.load(OFFSETS + cols[:, None] * ssn + group[None, :], mask=col_ok[:, None], other=0.0)
                w = s * q + m.to(tl.float32)
            elif INT4:
                w = s * (q - 8.0)
            else:
                w = s * q
            acc += tl.dot(x, tl.trans(w).to(x.dtype), input_precision=PREC)  # (M, K) x (K, N)
        if HAS_BIAS:
            acc += tl.load(BIAS + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + rows[:, None] * sym + cols[None, :], acc.to(Y.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])


def unsupported_reason(fmt: str, group_size: int, scales: torch.Tensor, offsets: torch.Tensor | None) -> str | None:
    """Why the Triton kernel cannot run this weight (None if it can)."""
    if fmt not in FORMATS:
        return f"{fmt} has no Triton kernel (int4 and int8 do)"
    if group_size % 32:
        return f"group size {group_size} is not a multiple of 32"
    if offsets is not None and offsets.stride() != scales.stride():
        return "offsets and scales differ in layout"
    return None


def qlinear_triton(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None,
                   bias: torch.Tensor | None, fmt: str, group_size: int) -> torch.Tensor:
    """y = x W^T + b, W in `fmt` (int4 or int8, nn/quant/formats.py). x (..., K) -> (..., N) in x's
    dtype (float32 inputs are multiplied in float32, bf16/fp16 in their own precision with float32
    accumulation). Inference only (no autograd). Mutates nothing."""
    triton_support.require(x, "the Triton quantized matmul")
    reason = unsupported_reason(fmt, group_size, scales, offsets)
    if reason:
        raise ValueError(reason)
    n = codes.shape[0]
    k = x.shape[-1]
    scales = scales.contiguous()
    offsets = None if offsets is None else offsets.contiguous()
    if k % 32 or codes.shape[1] != (k // 2 if fmt == "int4" else k):
        raise ValueError(f"quantized matmul: x has {k} inputs, codes {tuple(codes.shape)} ({fmt})")
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = x2.new_empty((m, n))
    interp = triton_support.interpreting()
    # decode (few rows): narrow M tiles, wide N; tl.dot needs every tile side >= 16
    block_m = 16 if interp or m <= 16 else (32 if m <= 32 else 64)
    block_n = 32 if interp else 64
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _qmatmul[grid](x2, codes, scales, offsets, bias, y, m, n, k, group_size,
                   x2.stride(0), codes.stride(0), scales.stride(0), y.stride(0),
                   INT4=fmt == "int4", HAS_OFFSETS=offsets is not None, HAS_BIAS=bias is not None,
                   BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=32,
                   PREC="ieee" if x.dtype == torch.float32 else "tf32", num_warps=1 if interp else 4)
    return y.view(*x.shape[:-1], n)
