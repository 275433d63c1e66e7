"""Flash attention forward and backward in Triton (Dao et al. 2022; FlashAttention-2, Dao 2023).

softmax(Q K^T / sqrt(D)) V without ever writing the (T, S) score matrix: each program owns a tile
of BLOCK_M queries of one head, walks the keys BLOCK_N at a time through on-chip memory and keeps
a running (online) softmax: the row maximum m, the denominator l and the unnormalised output.

    for each key block j:   s = q k_j^T * scale            (BLOCK_M, BLOCK_N), in registers
                            m' = max(m, rowmax(s));  p = exp(s - m')
                            l  = l exp(m - m') + rowsum(p);  acc = acc exp(m - m') + p v_j
    o = acc / l;  lse = m + log l  (saved for the backward)

The backward recomputes p from q, k and lse instead of storing it (FlashAttention's trade of
FLOPs for memory): one kernel per key block accumulates dK and dV over every query block (and over
the n_rep query heads sharing a KV head, for GQA/MQA, so no atomics are needed), another per query
block accumulates dQ. With delta = rowsum(dO * O):  dV = p^T dO,  dp = dO V^T,  ds = p (dp - delta),
dQ = ds K * scale,  dK = ds^T Q * scale.

Variants, all masks computed from indices inside the kernel:
  causal   key j is visible to query i when j <= i + (S - T) (bottom-right aligned: the T queries
           are the last T positions of the S keys, as after a KV cache), the same as
           nn/attention.py's `tril(S - T)`;
  window   additionally (i + S - T) - j < window (Mistral's sliding window; implies causal);
  GQA/MQA  query head h reads KV head h // (H / H_kv);
  varlen   packed sequences (T_total, H, D) with cumulative offsets cu_seqlens (B + 1,) int32, as
           flash-attn's `flash_attn_varlen_func` takes them.
Head dims: powers of two from 16 to 128 (64 and 128 are the ones models use).
The twin is `flash_attn_ref` (explicit softmax in float32); tests pin them, values and gradients.
"""

import math
from typing import Optional

import torch

from . import triton_support

try:  # the optional extra: without it `flash_attn` raises a clear error and models keep SDPA
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without the extra
    triton = tl = None

HEAD_DIMS = (16, 32, 64, 128)
_LOG2E = 1.4426950408889634


def _blocks(d: int, backward: bool = False) -> tuple[int, int, int]:
    """BLOCK_M, BLOCK_N, num_warps. Small tiles under the interpreter (more block edges tested per
    token); on a GPU tiles sized to fit shared memory at D = 128 (not tuned: no GPU was measured)."""
    if triton_support.interpreting():
        return 16, 16, 1
    if backward:
        return 64, 64, 4 if d <= 64 else 8
    return 128, 64, 4 if d <= 64 else 8


if triton is not None:

    @triton.jit
    def _seq_bounds(cu_q, cu_k, b, T_q, T_k, VARLEN: tl.constexpr):
        if VARLEN:
            q_start = tl.load(cu_q + b)
            q_len = tl.load(cu_q + b + 1) - q_start
            k_start = tl.load(cu_k + b)
            k_len = tl.load(cu_k + b + 1) - k_start
        else:
            q_start = 0
            q_len = T_q
            k_start = 0
            k_len = T_k
        return q_start, q_len, k_start, k_len

    @triton.jit
    def _visible(rows, cols, q_len, k_len, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
        """(M, N) bool: query rows may see key cols."""
        ok = (rows[:, None] < q_len) & (cols[None, :] < k_len)
        shift = k_len - q_len
        if CAUSAL:
            ok &= cols[None, :] <= rows[:, None] + shift
        if HAS_WINDOW:
            ok &= rows[:, None] + shift - cols[None, :] < window
        return ok

    @triton.jit
    def _flash_fwd(Q, K, V, O, LSE, cu_q, cu_k,
                   sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh, slb, slh,
                   H, n_rep, T_q, T_k, window, scale_log2,
                   CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, VARLEN: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
        pid_m = tl.program_id(0)
        b = tl.program_id(1) // H
        h = tl.program_id(1) % H
        q_start, q_len, k_start, k_len = _seq_bounds(cu_q, cu_k, b, T_q, T_k, VARLEN)
        start_m = pid_m * BLOCK_M
        if start_m < q_len:
            rows = start_m + tl.arange(0, BLOCK_M)
            offs_n = tl.arange(0, BLOCK_N)
            offs_d = tl.arange(0, D)
            q_base = Q + b * sqb + q_start * sqt + h * sqh
            k_base = K + b * skb + k_start * skt + (h // n_rep) * skh
            v_base = V + b * svb + k_start * svt + (h // n_rep) * svh
            q = tl.load(q_base + rows[:, None] * sqt + offs_d[None, :], mask=rows[:, None] < q_len, other=0.0)
            # a finite start for m: a row that sees no key in a block gets exp2(-inf - m) = 0, never NaN
            m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
            l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
            shift = k_len - q_len
            lo = 0
            hi = k_len
            if CAUSAL:
                hi = tl.minimum(k_len, start_m + BLOCK_M + shift)
            if HAS_WINDOW:  # key blocks wholly before every row's window are skipped
                lo = (tl.maximum(0, start_m + shift - window + 1) // BLOCK_N) * BLOCK_N
            for start_n in range(lo, hi, BLOCK_N):
                cols = start_n + offs_n
                k = tl.load(k_base + cols[:, None] * skt + offs_d[None, :], mask=cols[:, None] < k_len, other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale_log2  # (M, N), log2 units
                s = tl.where(_visible(rows, cols, q_len, k_len, window, CAUSAL, HAS_WINDOW), s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                p = tl.exp2(s - m_new[:, None])
                alpha = tl.exp2(m_i - m_new)
                l_i = l_i * alpha + tl.sum(p, 1)
                v = tl.load(v_base + cols[:, None] * svt + offs_d[None, :], mask=cols[:, None] < k_len, other=0.0)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
                m_i = m_new
            l_i = tl.where(l_i == 0.0, 1.0, l_i)
            o = acc / l_i[:, None]
            o_base = O + b * sob + q_start * sot + h * soh
            tl.store(o_base + rows[:, None] * sot + offs_d[None, :], o.to(O.dtype.element_ty), mask=rows[:, None] < q_len)
            tl.store(LSE + b * slb + h * slh + q_start + rows, m_i + tl.log2(l_i), mask=rows < q_len)

    @triton.jit
    def _flash_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, cu_q, cu_k,
                        sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, slb, slh,
                        H_kv, n_rep, T_q, T_k, window, scale_log2, scale,
                        CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, VARLEN: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
        """dK, dV of one key block of one KV head; dO has Q's strides, dK/dV K's."""
        pid_n = tl.program_id(0)
        b = tl.program_id(1) // H_kv
        hk = tl.program_id(1) % H_kv
        q_start, q_len, k_start, k_len = _seq_bounds(cu_q, cu_k, b, T_q, T_k, VARLEN)
        start_n = pid_n * BLOCK_N
        if start_n < k_len:
            cols = start_n + tl.arange(0, BLOCK_N)
            offs_m = tl.arange(0, BLOCK_M)
            offs_d = tl.arange(0, D)
            k_off = b * skb + k_start * skt + hk * skh + cols[:, None] * skt + offs_d[None, :]
            v_off = b * svb + k_start * svt + hk * svh + cols[:, None] * svt + offs_d[None, :]
            k = tl.load(K + k_off, mask=cols[:, None] < k_len, other=0.0)
            v = tl.load(V + v_off, mask=cols[:, None] < k_len, other=0.0)
            dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
            dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
            shift = k_len - q_len
            lo = 0
            hi = q_len
            if CAUSAL:  # queries before this block's first key see none of it
                lo = (tl.maximum(0, start_n - shift) // BLOCK_M) * BLOCK_M
            if HAS_WINDOW:
                hi = tl.minimum(q_len, start_n + BLOCK_N + window - shift)
            for g in range(0, n_rep):
                h = hk * n_rep + g
                q_base = Q + b * sqb + q_start * sqt + h * sqh
                do_base = DO + b * sqb + q_start * sqt + h * sqh
                stat = b * slb + h * slh + q_start
                for start_m in range(lo, hi, BLOCK_M):
                    rows = start_m + offs_m
                    in_q = rows[:, None] < q_len
                    q = tl.load(q_base + rows[:, None] * sqt + offs_d[None, :], mask=in_q, other=0.0)
                    do = tl.load(do_base + rows[:, None] * sqt + offs_d[None, :], mask=in_q, other=0.0)
                    lse = tl.load(LSE + stat + rows, mask=rows < q_len, other=0.0)
                    delta = tl.load(DELTA + stat + rows, mask=rows < q_len, other=0.0)
                    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale_log2
                    p = tl.exp2(s - lse[:, None])
                    p = tl.where(_visible(rows, cols, q_len, k_len, window, CAUSAL, HAS_WINDOW), p, 0.0)
                    dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
                    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
                    ds = p * (dp - delta[:, None])
                    dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
            tl.store(DK + k_off, (dk * scale).to(DK.dtype.element_ty), mask=cols[:, None] < k_len)
            tl.store(DV + v_off, dv.to(DV.dtype.element_ty), mask=cols[:, None] < k_len)

    @triton.jit
    def _flash_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, cu_q, cu_k,
                      sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, slb, slh,
                      H, n_rep, T_q, T_k, window, scale_log2, scale,
                      CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, VARLEN: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
        pid_m = tl.program_id(0)
        b = tl.program_id(1) // H
        h = tl.program_id(1) % H
        q_start, q_len, k_start, k_len = _seq_bounds(cu_q, cu_k, b, T_q, T_k, VARLEN)
        start_m = pid_m * BLOCK_M
        if start_m < q_len:
            rows = start_m + tl.arange(0, BLOCK_M)
            offs_n = tl.arange(0, BLOCK_N)
            offs_d = tl.arange(0, D)
            q_off = b * sqb + q_start * sqt + h * sqh + rows[:, None] * sqt + offs_d[None, :]
            q = tl.load(Q + q_off, mask=rows[:, None] < q_len, other=0.0)
            do = tl.load(DO + q_off, mask=rows[:, None] < q_len, other=0.0)
            stat = b * slb + h * slh + q_start
            lse = tl.load(LSE + stat + rows, mask=rows < q_len, other=0.0)
            delta = tl.load(DELTA + stat + rows, mask=rows < q_len, other=0.0)
            k_base = K + b * skb + k_start * skt + (h // n_rep) * skh
            v_base = V + b * svb + k_start * svt + (h // n_rep) * svh
            dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
            shift = k_len - q_len
            lo = 0
            hi = k_len
            if CAUSAL:
                hi = tl.minimum(k_len, start_m + BLOCK_M + shift)
            if HAS_WINDOW:
                lo = (tl.maximum(0, start_m + shift - window + 1) // BLOCK_N) * BLOCK_N
            for start_n in range(lo, hi, BLOCK_N):
                cols = start_n + offs_n
                k = tl.load(k_base + cols[:, None] * skt + offs_d[None, :], mask=cols[:, None] < k_len, other=0.0)
                v = tl.load(v_base + cols[:, None] * svt + offs_d[None, :], mask=cols[:, None] < k_len, other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale_log2
                p = tl.exp2(s - lse[:, None])
                p = tl.where(_visible(rows, cols, q_len, k_len, window, CAUSAL, HAS_WINDOW), p, 0.0)
                dp = tl.dot(do, tl.trans(v), input_precision=PREC)
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
            tl.store(DQ + q_off, (dq * scale).to(DQ.dtype.element_ty), mask=rows[:, None] < q_len)


def _layout(x: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(batch, token, head) strides: (B, H, T, D) batched, or (T_total, H, D) packed (batch stride 0)."""
    if varlen:
        return 0, x.stride(0), x.stride(1)
    return x.stride(0), x.stride(2), x.stride(1)


def _check(q, k, v, cu_q, cu_k, causal: bool, window: int) -> None:
    varlen = cu_q is not None
    if (cu_k is None) != (cu_q is None):
        raise ValueError("varlen attention needs both cu_seqlens_q and cu_seqlens_k")
    want = 3 if varlen else 4
    if q.dim() != want or k.shape != v.shape or k.dim() != want:
        raise ValueError(f"flash attention shapes: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         f"({'(T, H, D) packed' if varlen else '(B, H, T, D)'} expected)")
    d = q.shape[-1]
    h, h_kv = (q.shape[1], k.shape[1])
    if d not in HEAD_DIMS or k.shape[-1] != d:
        raise ValueError(f"flash attention head dim must be one of {HEAD_DIMS}, got {d}")
    if h % h_kv:
        raise ValueError(f"{h} query heads cannot share {h_kv} KV heads evenly")
    if window and not causal:
        raise ValueError("a sliding window is a causal mask: pass causal=True with window")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("flash attention needs the head dim contiguous (stride 1)")


def _grid_dims(q, k, cu_q, max_q: int, max_k: int):
    if cu_q is None:
        return q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    return cu_q.numel() - 1, q.shape[1], k.shape[1], max_q, max_k


def _prec(dtype: torch.dtype) -> str:
    # float32 inputs get float32 products (tf32 would be a silent precision loss against the reference)
    return "ieee" if dtype == torch.float32 else "tf32"


@torch.library.custom_op("hybridlm::flash_attn_fwd", mutates_args=())
def flash_attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: Optional[torch.Tensor],
                   cu_k: Optional[torch.Tensor], max_q: int, max_k: int, causal: bool, window: int,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """o like q, and lse float32 (B, H, T) batched or (H, T_total) packed, in log2 units."""
    varlen = cu_q is not None
    n_b, h, h_kv, t_q, t_k = _grid_dims(q, k, cu_q, max_q, max_k)
    o = torch.empty_like(q)
    lse = q.new_empty((h, q.shape[0]) if varlen else (n_b, h, t_q), dtype=torch.float32)
    block_m, block_n, warps = _blocks(q.shape[-1])
    slb, slh = (0, lse.stride(0)) if varlen else (lse.stride(0), lse.stride(1))
    grid = (triton.cdiv(t_q, block_m), n_b * h)
    _flash_fwd[grid](q, k, v, o, lse, cu_q, cu_k, *_layout(q, varlen), *_layout(k, varlen), *_layout(v, varlen),
                     *_layout(o, varlen), slb, slh, h, h // h_kv, t_q, t_k, window, scale * _LOG2E,
                     CAUSAL=causal, HAS_WINDOW=window > 0, VARLEN=varlen, BLOCK_M=block_m, BLOCK_N=block_n,
                     D=q.shape[-1], PREC=_prec(q.dtype), num_warps=warps)
    return o, lse


@flash_attn_fwd.register_fake
def _(q, k, v, cu_q, cu_k, max_q, max_k, causal, window, scale):
    if cu_q is None:
        return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@torch.library.custom_op("hybridlm::flash_attn_bwd", mutates_args=())
def flash_attn_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                   lse: torch.Tensor, cu_q: Optional[torch.Tensor], cu_k: Optional[torch.Tensor], max_q: int,
                   max_k: int, causal: bool, window: int, scale: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv from the saved o and lse (p recomputed per tile)."""
    varlen = cu_q is not None
    # dO is read with q's strides and dq/dk/dv are written with q's/k's/v's: one layout for all
    q, k, v, do = q.contiguous(), k.contiguous(), v.contiguous(), do.contiguous()
    n_b, h, h_kv, t_q, t_k = _grid_dims(q, k, cu_q, max_q, max_k)
    # delta = rowsum(dO * O), laid out like lse
    delta = (do.float() * o.float()).sum(-1)
    delta = delta.transpose(0, 1).contiguous() if varlen else delta.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    block_m, block_n, warps = _blocks(q.shape[-1], backward=True)
    slb, slh = (0, lse.stride(0)) if varlen else (lse.stride(0), lse.stride(1))
    common = dict(CAUSAL=causal, HAS_WINDOW=window > 0, VARLEN=varlen, BLOCK_M=block_m, BLOCK_N=block_n,
                  D=q.shape[-1], PREC=_prec(q.dtype), num_warps=warps)
    strides = (*_layout(q, varlen), *_layout(k, varlen), *_layout(v, varlen), slb, slh)
    _flash_bwd_dkdv[(triton.cdiv(t_k, block_n), n_b * h_kv)](
        q, k, v, do, lse, delta, dk, dv, cu_q, cu_k, *strides, h_kv, h // h_kv, t_q, t_k, window,
        scale * _LOG2E, scale, **common)
    _flash_bwd_dq[(triton.cdiv(t_q, block_m), n_b * h)](
        q, k, v, do, lse, delta, dq, cu_q, cu_k, *strides, h, h // h_kv, t_q, t_k, window,
        scale * _LOG2E, scale, **common)
    return dq, dk, dv


@flash_attn_bwd.register_fake
def _(do, q, k, v, o, lse, cu_q, cu_k, max_q, max_k, causal, window, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, causal, window, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, cu_q, cu_k)
    ctx.args = (max_q, max_k, causal, window, scale)


def _backward(ctx, do, dlse):
    q, k, v, o, lse, cu_q, cu_k = ctx.saved_tensors
    dq, dk, dv = flash_attn_bwd(do, q, k, v, o, lse, cu_q, cu_k, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None, None


flash_attn_fwd.register_autograd(_backward, setup_context=_setup_context)


def flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
               window: int | None = None, scale: float | None = None) -> torch.Tensor:
    """Batched flash attention. q (B, H, T, D), k/v (B, H_kv, S, D) -> (B, H, T, D) in q's dtype.
    Differentiable in q, k, v. Mutates nothing."""
    _check(q, k, v, None, None, causal, window or 0)
    triton_support.require(q, "flash attention")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return flash_attn_fwd(q, k, v, None, None, q.shape[2], k.shape[2], causal, window or 0, scale)[0]


def flash_attn_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                      cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool = False,
                      window: int | None = None, scale: float | None = None) -> torch.Tensor:
    """Packed sequences: q (T_total, H, D), k/v (S_total, H_kv, D); sequence b holds q rows
    cu_seqlens_q[b]:cu_seqlens_q[b+1] and k/v rows cu_seqlens_k[b]:cu_seqlens_k[b+1] (int32,
    (B + 1,)). -> (T_total, H, D). Differentiable in q, k, v. Mutates nothing."""
    _check(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, window or 0)
    triton_support.require(q, "flash attention")
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError("cu_seqlens_q and cu_seqlens_k must have the same length (B + 1)")
    if causal and bool(((cu_seqlens_k.diff() - cu_seqlens_q.diff()) < 0).any()):
        raise ValueError("causal varlen attention needs at least as many keys as queries per sequence")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    cu_q, cu_k = cu_seqlens_q.to(torch.int32).contiguous(), cu_seqlens_k.to(torch.int32).contiguous()
    return flash_attn_fwd(q, k, v, cu_q, cu_k, max_seqlen_q, max_seqlen_k, causal, window or 0, scale)[0]


def flash_attn_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                   window: int | None = None, scale: float | None = None) -> torch.Tensor:
    """softmax(Q K^T * scale + mask) V written out in float32 (Vaswani et al. 2017, eq. 1), with the
    same bottom-right causal and window masks. q (B, H, T, D), k/v (B, H_kv, S, D) -> q's dtype."""
    t, s = q.shape[2], k.shape[2]
    rep = q.shape[1] // k.shape[1]
    kf, vf = k.float().repeat_interleave(rep, dim=1), v.float().repeat_interleave(rep, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q.float() @ kf.transpose(-1, -2) * scale  # (B, H, T, S)
    i = torch.arange(t, device=q.device)[:, None] + (s - t)
    j = torch.arange(s, device=q.device)[None, :]
    ok = torch.ones(t, s, dtype=torch.bool, device=q.device)
    if causal:
        ok &= j <= i
    if window:
        ok &= (i - j) < window
    probs = scores.masked_fill(~ok, float("-inf")).softmax(-1)
    return (probs @ vf).to(q.dtype)


def flash_attn_varlen_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, causal: bool = False, window: int | None = None,
                          scale: float | None = None) -> torch.Tensor:
    """The packed layout through `flash_attn_ref`, one sequence at a time."""
    out = []
    for b in range(cu_seqlens_q.numel() - 1):
        qs, qe, ks, ke = (int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]), int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1]))
        one = (x.transpose(0, 1)[None] for x in (q[qs:qe], k[ks:ke], v[ks:ke]))  # (1, H, T, D)
        out.append(flash_attn_ref(*one, causal=causal, window=window, scale=scale)[0].transpose(0, 1))
    return torch.cat(out)
