"""Fused elementwise kernels in Triton: RMSNorm (+ residual add), SwiGLU, RoPE; forward and backward.

Each replaces a chain of PyTorch ops that would read and write the activations several times with
one pass (memory-bound ops: the bytes are the cost). Their twins are the plain PyTorch functions
the models already use, and tests pin the two, values and gradients:

  rms_norm_triton(x, w, eps, residual)  twin `rms_norm_residual_ref`:  h = x + residual;
                                        y = h / sqrt(mean(h^2) + eps) * w  (Zhang & Sennrich 2019)
  swiglu_triton(h)                      twin `swiglu_ref`: silu(gate) * up, h = [gate; up] on the last
                                        dim, as nn/mlp.py's fused w_in lays them out (Shazeer 2020)
  rope_triton(x, cos, sin)              twin nn/positions.py's `apply_rope`: x cos + rotate_half(x) sin
                                        with its tables (sin holding (-sin, sin)); backward = the
                                        inverse rotation, i.e. the same kernel with -sin

Statistics and arithmetic are float32 inside; outputs take the input's dtype.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from . import triton_support

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = tl = None


if triton is not None:

    @triton.jit
    def _rmsnorm_fwd(X, R, W, Y, H, RSTD, D, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        live = cols < D
        h = tl.load(X + row * D + cols, mask=live, other=0.0).to(tl.float32)
        if HAS_RES:
            h += tl.load(R + row * D + cols, mask=live, other=0.0).to(tl.float32)
            tl.store(H + row * D + cols, h.to(H.dtype.element_ty), mask=live)
        rstd = 1.0 / tl.sqrt(tl.sum(h * h, 0) / D + eps)
        w = tl.load(W + cols, mask=live, other=0.0).to(tl.float32)
        tl.store(Y + row * D + cols, (h * rstd * w).to(Y.dtype.element_ty), mask=live)
        tl.store(RSTD + row, rstd)

    @triton.jit
    def _rmsnorm_bwd(DY, DH_OUT, H, W, RSTD, DX, DW_PART, M, D, rows_per_prog,
                     HAS_DH: tl.constexpr, BLOCK: tl.constexpr):
        """dx = rstd (g - n mean(g n)) (+ the gradient reaching h through the residual output),
        g = dy w, n = h rstd; dW summed over this program's rows into DW_PART[pid]."""
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        live = cols < D
        w = tl.load(W + cols, mask=live, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(0, rows_per_prog):
            row = pid.to(tl.int64) * rows_per_prog + i
            if row < M:
                h = tl.load(H + row * D + cols, mask=live, other=0.0).to(tl.float32)
                dy = tl.load(DY + row * D + cols, mask=live, other=0.0).to(tl.float32)
                rstd = tl.load(RSTD + row)
                n = h * rstd
                g = dy * w
                dx = rstd * (g - n * (tl.sum(g * n, 0) / D))
                if HAS_DH:
                    dx += tl.load(DH_OUT + row * D + cols, mask=live, other=0.0).to(tl.float32)
                tl.store(DX + row * D + cols, dx.to(DX.dtype.element_ty), mask=live)
                dw += dy * n
        tl.store(DW_PART + pid * D + cols, dw, mask=live)

    @triton.jit
    def _swiglu_fwd(HG, Y, F_, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        row = offs // F_
        col = offs % F_
        gate = tl.load(HG + row * 2 * F_ + col, mask=live, other=0.0).to(tl.float32)
        up = tl.load(HG + row * 2 * F_ + F_ + col, mask=live, other=0.0).to(tl.float32)
        tl.store(Y + offs, (gate * tl.sigmoid(gate) * up).to(Y.dtype.element_ty), mask=live)

    @triton.jit
    def _swiglu_bwd(HG, DY, DHG, F_, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        row = offs // F_
        col = offs % F_
        gate = tl.load(HG + row * 2 * F_ + col, mask=live, other=0.0).to(tl.float32)
        up = tl.load(HG + row * 2 * F_ + F_ + col, mask=live, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=live, other=0.0).to(tl.float32)
        sig = tl.sigmoid(gate)
        # d silu(g) / dg = sig (1 + g (1 - sig))
        dgate = dy * up * sig * (1.0 + gate * (1.0 - sig))
        tl.store(DHG + row * 2 * F_ + col, dgate.to(DHG.dtype.element_ty), mask=live)
        tl.store(DHG + row * 2 * F_ + F_ + col, (dy * gate * sig).to(DHG.dtype.element_ty), mask=live)

    @triton.jit
    def _rope(X, COS, SIN, Y, T, n_heads, sxb, sxt, sxh, scb, sct, syb, syt, syh, sign,
              D: tl.constexpr, BLOCK_H: tl.constexpr):
        """One (b, t) row, all heads: y_i = x_i cos_i + x_{i +- D/2} sin_i (sin scaled by `sign`)."""
        b = tl.program_id(0) // T
        t = tl.program_id(0) % T
        heads = tl.arange(0, BLOCK_H)
        d = tl.arange(0, D)
        partner = (d + D // 2) % D
        live = heads[:, None] < n_heads
        base = X + b * sxb + t * sxt + heads[:, None] * sxh
        x = tl.load(base + d[None, :], mask=live, other=0.0).to(tl.float32)
        xp = tl.load(base + partner[None, :], mask=live, other=0.0).to(tl.float32)
        cos = tl.load(COS + b * scb + t * sct + d).to(tl.float32)
        sin = tl.load(SIN + b * scb + t * sct + d).to(tl.float32) * sign
        y = x * cos[None, :] + xp * sin[None, :]
        tl.store(Y + b * syb + t * syt + heads[:, None] * syh + d[None, :], y.to(Y.dtype.element_ty), mask=live)


def _warps() -> int:
    return 1 if triton_support.interpreting() else 4


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, residual, eps):
        shape, d = x.shape, x.shape[-1]
        x2 = x.reshape(-1, d).contiguous()
        r2 = None if residual is None else residual.reshape(-1, d).contiguous()
        m = x2.shape[0]
        y = torch.empty_like(x2)
        h = torch.empty_like(x2) if r2 is not None else x2
        rstd = torch.empty(m, device=x.device, dtype=torch.float32)
        block = triton.next_power_of_2(d)
        _rmsnorm_fwd[(m,)](x2, r2, weight, y, h, rstd, d, eps, HAS_RES=r2 is not None, BLOCK=block,
                           num_warps=_warps())
        ctx.save_for_backward(h, weight, rstd)
        ctx.shape, ctx.has_res, ctx.wdtype = shape, r2 is not None, weight.dtype
        # without a residual h is x itself: returned by the wrapper, not by the Function (no aliasing)
        return (y.view(shape), h.view(shape)) if r2 is not None else y.view(shape)

    @staticmethod
    def backward(ctx, dy, dh_out=None):
        h, weight, rstd = ctx.saved_tensors
        d = h.shape[-1]
        m = h.shape[0]
        dx = torch.empty_like(h)
        rows = max(1, triton.cdiv(m, 4 * 132)) if not triton_support.interpreting() else max(1, triton.cdiv(m, 4))
        progs = triton.cdiv(m, rows)
        dw_part = torch.empty((progs, d), device=h.device, dtype=torch.float32)
        has_dh = ctx.has_res and dh_out is not None
        dh2 = dh_out.reshape(-1, d).contiguous() if has_dh else None
        _rmsnorm_bwd[(progs,)](dy.reshape(-1, d).contiguous(), dh2, h, weight, rstd, dx, dw_part, m, d, rows,
                               HAS_DH=has_dh, BLOCK=triton.next_power_of_2(d), num_warps=_warps())
        dx = dx.view(ctx.shape)
        return dx, dw_part.sum(0).to(ctx.wdtype), dx if ctx.has_res else None, None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., D), weight (D,), residual like x or None -> (y, h): h = x + residual (x itself
    without one), y = rmsnorm(h) * weight, both in x's dtype. Differentiable in x, weight, residual."""
    triton_support.require(x, "the fused RMSNorm")
    if weight.shape != (x.shape[-1],) or (residual is not None and residual.shape != x.shape):
        raise ValueError(f"rms norm shapes: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
                         f"residual {None if residual is None else tuple(residual.shape)}")
    if residual is None:
        return _RMSNorm.apply(x, weight, None, eps), x
    return _RMSNorm.apply(x, weight, residual, eps)


def rms_norm_residual_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The twin in float32: h = x + residual; y = h * rsqrt(mean(h^2) + eps) * w (RMSNorm eq. 4)."""
    h = x if residual is None else (x.float() + residual.float()).to(x.dtype)
    hf = h.float()
    y = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return y.to(x.dtype), h


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        f = h.shape[-1] // 2
        h2 = h.contiguous()
        y = h2.new_empty((*h.shape[:-1], f))
        n = y.numel()
        block = 1024
        _swiglu_fwd[(triton.cdiv(n, block),)](h2, y, f, n, BLOCK=block, num_warps=_warps())
        ctx.save_for_backward(h2)
        return y

    @staticmethod
    def backward(ctx, dy):
        (h,) = ctx.saved_tensors
        f = h.shape[-1] // 2
        dh = torch.empty_like(h)
        n = dy.numel()
        block = 1024
        _swiglu_bwd[(triton.cdiv(n, block),)](h, dy.contiguous(), dh, f, n, BLOCK=block, num_warps=_warps())
        return dh


def swiglu_triton(h: torch.Tensor) -> torch.Tensor:
    """h (..., 2F) = [gate; up] -> silu(gate) * up (..., F) in h's dtype. Differentiable."""
    triton_support.require(h, "the fused SwiGLU")
    if h.shape[-1] % 2:
        raise ValueError(f"SwiGLU needs an even last dim ([gate; up]), got {h.shape[-1]}")
    return _SwiGLU.apply(h)


def swiglu_ref(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in float32, cast back."""
    gate, up = h.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(h.dtype)


def _rope_launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    b, t, h, d = x.shape
    y = torch.empty((b, t, h, d), device=x.device, dtype=x.dtype)
    cos_b, sin_b = cos.expand(b, t, 1, d), sin.expand(b, t, 1, d)
    if cos_b.stride(-1) != 1 or sin_b.stride() != cos_b.stride():
        cos_b, sin_b = cos_b.contiguous(), sin_b.contiguous()
    if x.stride(-1) != 1:
        x = x.contiguous()
    _rope[(b * t,)](x, cos_b, sin_b, y, t, h, x.stride(0), x.stride(1), x.stride(2), cos_b.stride(0),
                    cos_b.stride(1), y.stride(0), y.stride(1), y.stride(2), sign, D=d,
                    BLOCK_H=triton.next_power_of_2(h), num_warps=_warps())
    return y


class _RoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rope_launch(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return _rope_launch(dy, cos, sin, -1.0), None, None


def rope_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rope` (nn/positions.py) fused: x (B, T, H, D) (any strides, head dim contiguous), cos and
    sin (B or 1, T, 1, D) from `rope_cos_sin` -> (B, T, H, D) contiguous in x's dtype. Differentiable in x."""
    triton_support.require(x, "the fused RoPE")
    d = x.shape[-1]
    if x.dim() != 4 or d & (d - 1) or cos.shape[-1] != d or cos.shape != sin.shape:
        raise ValueError(f"rope shapes: x {tuple(x.shape)} (head dim a power of 2), cos {tuple(cos.shape)}, "
                         f"sin {tuple(sin.shape)}")
    return _RoPE.apply(x, cos, sin)
