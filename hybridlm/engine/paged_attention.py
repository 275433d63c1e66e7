"""Attention over the paged block pools for one flattened engine step.

A step's tokens are one row (1, T): first the decode tokens (one per sequence), then each prefill
chunk's tokens. Each layer writes its new K/V into its pool (paged_cache.py) and calls the attend
function built here, which gives every query the keys of its own sequence only:

  decode tokens  -> `paged_decode_attention` over the block tables ("native" C++ op, reading the
                    blocks in place; "triton" its CUDA twin, kernels/paged_decode_triton.py), or a
                    padded gather + SDPA ("gather"), or the reference;
  prefill chunk  -> its sequence's rows gathered into a contiguous (1, H_kv, S, D) cache, then
                    SDPA with a causal mask offset by the tokens already cached (one copy of
                    one sequence, amortised over the chunk's many queries).

`impl="ref"` runs everything through the gather-then-explicit-softmax references (attention_ref,
paged_decode_attention_ref); tests pin the fast paths to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..kernels import paged_attention as native
from ..nn.attention import allowed_keys, attention_ref, attention_sdpa

IMPLS = ("native", "triton", "gather", "ref")


@dataclass
class DecodeBatch:
    """The decode tokens of a step: columns [0, n) of the flat batch."""

    n: int
    block_tables: torch.Tensor  # (n, M) int32
    ctx_lens: torch.Tensor  # (n,) int32: keys per query (its position + 1)


@dataclass
class PrefillChunk:
    """One sequence's chunk of n tokens at columns [start, start + n), positions [pos, pos + n)."""

    start: int
    n: int
    pos: int
    rows: torch.Tensor  # (pos + n,) int64: pool rows of positions 0 .. pos + n - 1


def _decode_gather(q, k_pool, v_pool, batch: DecodeBatch, block_size: int, window: int | None):
    """Pad every sequence's rows to the longest, gather, and run one masked SDPA."""
    lens = batch.ctx_lens.long()
    s_max = int(lens.max())
    pos = torch.arange(s_max, device=q.device)
    blocks = batch.block_tables.long().gather(1, (pos // block_size).expand(batch.n, -1).clamp(max=batch.block_tables.shape[1] - 1))
    rows = blocks * block_size + pos % block_size  # (n, S)
    valid = pos[None] < lens[:, None]
    if window:
        valid &= pos[None] >= (lens[:, None] - window)
    rows = rows.masked_fill(~valid, 0)
    k = k_pool[rows].permute(0, 2, 1, 3)  # (n, H_kv, S, D)
    v = v_pool[rows].permute(0, 2, 1, 3)
    out = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=valid[:, None, None, :],
                                         enable_gqa=q.shape[1] != k.shape[1])
    return out[:, :, 0]


def _decode(q, k_pool, v_pool, batch: DecodeBatch, block_size: int, window: int | None, impl: str):
    if impl == "native":
        return native.paged_decode_attention(q.contiguous(), k_pool, v_pool, batch.block_tables, batch.ctx_lens,
                                             block_size, window)
    if impl == "triton":
        from ..kernels.paged_decode_triton import paged_decode_attention_triton

        return paged_decode_attention_triton(q, k_pool, v_pool, batch.block_tables, batch.ctx_lens, block_size, window)
    if impl == "gather":
        return _decode_gather(q, k_pool, v_pool, batch, block_size, window)
    return native.paged_decode_attention_ref(q, k_pool, v_pool, batch.block_tables, batch.ctx_lens, block_size, window)


# a chunk this short after cached tokens (a speculative verification, engine/speculative.py) runs as
# n decode queries of one sequence on the native op, which reads the blocks in place: gathering the
# whole sequence for a handful of queries cost ~12 ms a layer at 370 tokens (SmolLM2, 2 cores)
SHORT_CHUNK = 16


def _prefill(q, k_pool, v_pool, chunk: PrefillChunk, window: int | None, impl: str, block_size: int):
    """q (n, H, D) -> (n, H, D): causal attention over the sequence's first pos + n rows."""
    if impl == "native" and chunk.pos > 0 and chunk.n <= SHORT_CHUNK:
        table = (chunk.rows[::block_size] // block_size).to(torch.int32)[None].expand(chunk.n, -1).contiguous()
        lens = torch.arange(chunk.pos + 1, chunk.pos + chunk.n + 1, dtype=torch.int32, device=q.device)  # causal
        return native.paged_decode_attention(q.contiguous(), k_pool, v_pool, table, lens, block_size, window)
    k = k_pool[chunk.rows].transpose(0, 1)[None]  # (1, H_kv, S, D)
    v = v_pool[chunk.rows].transpose(0, 1)[None]
    q = q.transpose(0, 1)[None]  # (1, H, n, D)
    fresh = chunk.pos == 0 and (window is None or chunk.n <= window)
    if fresh and impl != "ref":
        return attention_sdpa(q, k, v, None, True)[0].transpose(0, 1)
    q_pos = torch.arange(chunk.pos, chunk.pos + chunk.n, device=q.device)[None]
    k_pos = torch.arange(chunk.pos + chunk.n, device=q.device)[None]
    mask = allowed_keys(q_pos, k_pos, window)  # (1, 1, n, S)
    attend = attention_ref if impl == "ref" else attention_sdpa
    return attend(q, k, v, mask, False)[0].transpose(0, 1)


def make_attend(decode: DecodeBatch | None, chunks: list[PrefillChunk], block_size: int, window: int | None,
                impl: str):
    """The attend function of one step (signature of `attention_sdpa`; the mask arguments are
    ignored: each sequence's keys come from its rows)."""
    if impl not in IMPLS:
        raise ValueError(f"paged attention impl must be one of {IMPLS}, not {impl!r}")

    def attend(q, k_pool, v_pool, mask=None, is_causal=False, dropout_p=0.0):
        q = q[0].transpose(0, 1)  # (1, H, T, D) -> (T, H, D)
        parts = []
        if decode is not None:
            parts.append(_decode(q[:decode.n], k_pool, v_pool, decode, block_size, window, impl))
        for chunk in chunks:
            parts.append(_prefill(q[chunk.start:chunk.start + chunk.n], k_pool, v_pool, chunk, window, impl,
                                  block_size))
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out.transpose(0, 1)[None]  # (1, H, T, D)

    return attend
