"""Paged decode attention in Triton, split-K over long contexts (the GPU twin of paged_attention.cpp).

One query token per sequence attends over its keys, which live scattered in the serving engine's
block pools (engine/paged_cache.py):

    k_pool, v_pool (R, H_kv, D), R = n_blocks * block_size rows
    block_tables (N, M) int32: position p of sequence n is row  block_tables[n, p // bs] * bs + p % bs
    ctx_lens (N,) int32: keys at positions [max(0, len - window), len)

Stage 1 (`_paged_decode_split`): program (n, kv head, split) reads the split's positions BLOCK_N at
a time, looking each position's row up in the block table (so any block size works), and runs the
online softmax for the n_rep query heads that share the KV head at once, as rows of one tile (padded
to 16 for tl.dot). It writes its partial output and log-sum-exp. A long context split over many
programs keeps the GPU busy at batch 1, where one program per head would leave most SMs idle
(flash-decoding, Dao et al. 2023).
Stage 2 (PyTorch, a few small ops): o = sum_s exp(lse_s - lse) o_s with lse = logsumexp_s lse_s.

The twin is `kernels.paged_attention.paged_decode_attention_ref` (gather each sequence's rows,
explicit softmax); tests pin them.
"""

from __future__ import annotations

import math

import torch

from . import triton_support

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = tl = None

_LOG2E = 1.4426950408889634


if triton is not None:

    @triton.jit
    def _paged_decode_split(Q, K, V, TABLES, LENS, O_PART, LSE_PART,
                            sqn, sqh, skr, skh, svr, svh, stn, son, soh, sos, sln, slh,
                            n_rep, block_size, window, split_len, scale_log2,
                            HAS_WINDOW: tl.constexpr, REP: tl.constexpr, BLOCK_N: tl.constexpr,
                            D: tl.constexpr):
        n = tl.program_id(0)
        hk = tl.program_id(1)
        split = tl.program_id(2)
        length = tl.load(LENS + n)
        lo = 0
        if HAS_WINDOW:
            lo = tl.maximum(0, length - window)
        start = tl.maximum(lo, split * split_len)
        end = tl.minimum(length, (split + 1) * split_len)
        heads = hk * n_rep + tl.arange(0, REP)  # (REP,) query heads of this KV head; rows >= n_rep are padding
        head_ok = tl.arange(0, REP) < n_rep
        offs_d = tl.arange(0, D)
        # float32 products: decode reads each key once, so the cost is the bytes, not the arithmetic
        q = tl.load(Q + n * sqn + heads[:, None] * sqh + offs_d[None, :], mask=head_ok[:, None], other=0.0)
        q = q.to(tl.float32)
        m_i = tl.full([REP], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([REP], dtype=tl.float32)
        acc = tl.zeros([REP, D], dtype=tl.float32)
        for pos0 in range(start, end, BLOCK_N):
            pos = pos0 + tl.arange(0, BLOCK_N)
            live = pos < end
            page = tl.load(TABLES + n * stn + pos // block_size, mask=live, other=0)
            rows = page.to(tl.int64) * block_size + pos % block_size
            k = tl.load(K + rows[:, None] * skr + hk * skh + offs_d[None, :], mask=live[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k).to(tl.float32), input_precision="ieee") * scale_log2  # (REP, BLOCK_N)
            s = tl.where(live[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + rows[:, None] * svr + hk * svh + offs_d[None, :], mask=live[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
            m_i = m_new
        empty = l_i == 0.0  # a split wholly outside [lo, len): weight zero in stage 2
        o = acc / tl.where(empty, 1.0, l_i)[:, None]
        lse = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
        tl.store(O_PART + n * son + heads[:, None] * soh + split * sos + offs_d[None, :], o, mask=head_ok[:, None])
        tl.store(LSE_PART + n * sln + heads * slh + split, lse, mask=head_ok)


def default_splits(max_len: int, n_seqs: int, n_kv_heads: int, n_sms: int = 132) -> int:
    """Splits per sequence: enough programs for about two waves over the SMs, never a split under
    256 keys (its partial output would cost more to write than its keys to read)."""
    want = max(1, (2 * n_sms) // max(1, n_seqs * n_kv_heads))
    return max(1, min(want, math.ceil(max_len / 256)))


def paged_decode_attention_triton(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                                  block_tables: torch.Tensor, ctx_lens: torch.Tensor, block_size: int,
                                  window: int | None = None, n_splits: int | None = None,
                                  max_len: int | None = None) -> torch.Tensor:
    """The same contract as `paged_decode_attention` (kernels/paged_attention.py): q (N, H, D),
    pools (R, H_kv, D), block_tables (N, M) int32, ctx_lens (N,) int32 -> (N, H, D) in q's dtype.
    n_splits: split-K factor (default from the longest context, `max_len`, read from ctx_lens
    when not given). Mutates nothing."""
    triton_support.require(q, "paged decode attention")
    n, h, d = q.shape
    h_kv = k_pool.shape[1]
    if h % h_kv or d & (d - 1) or d < 16:
        raise ValueError(f"paged decode attention: {h} heads over {h_kv} KV heads, head dim {d} (a power of 2 >= 16)")
    if max_len is None:
        max_len = int(ctx_lens.max()) if n else 0
    if n_splits is None:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 4
        n_splits = default_splits(max_len, n, h_kv, sms)
    block_n = 16 if triton_support.interpreting() else 64
    split_len = block_n * math.ceil(max(1, max_len) / (n_splits * block_n))
    o_part = q.new_empty((n, h, n_splits, d), dtype=torch.float32)
    lse_part = q.new_empty((n, h, n_splits), dtype=torch.float32)
    tables = block_tables.to(torch.int32)
    rep = h // h_kv
    if n:
        _paged_decode_split[(n, h_kv, n_splits)](
            q, k_pool, v_pool, tables, ctx_lens.to(torch.int32), o_part, lse_part,
            q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
            tables.stride(0), o_part.stride(0), o_part.stride(1), o_part.stride(2), lse_part.stride(0),
            lse_part.stride(1), rep, block_size, window or 0, split_len, _LOG2E / math.sqrt(d),
            HAS_WINDOW=bool(window), REP=max(16, triton.next_power_of_2(rep)), BLOCK_N=block_n, D=d)
    # stage 2: lse in log2 units; every sequence has a key, so some split is finite
    weights = torch.exp2(lse_part - lse_part.max(-1, keepdim=True).values)  # (N, H, S)
    out = (weights[..., None] * o_part).sum(2) / weights.sum(-1, keepdim=True)
    return out.to(q.dtype)
