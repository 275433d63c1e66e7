"""Decode attention over paged K/V pools: the C++ op (`paged_attention.cpp`) and its reference.

`paged_decode_attention` is the custom op `torch.ops.hybridlm.paged_decode_attention`, compiled
from paged_attention.cpp on first use by build.py (cached on disk; seconds, once) and given a fake
implementation so `torch.compile` sees one op.
`paged_decode_attention_ref` gathers each sequence's rows into a contiguous cache and runs the
explicit softmax(q K^T / sqrt(D)) V: tests pin the two together.

Why a native op: batched decoding reads every running sequence's whole cache each step. Gathering
those rows into a contiguous copy first (what SDPA would need) writes and reads the cache a second
time; this op reads each key and value row once, straight from its block.
"""

from __future__ import annotations

import math

import torch

from .build import KernelUnavailable, Unit, build

_UNITS = (Unit("paged_attention.cpp", uses_torch=True), Unit("threadpool.cpp"))
_HEADERS = ("threadpool.h",)
_loaded = False
_error: str | None = None  # why the op is unavailable, once a load failed


def load() -> None:
    """Build (first use on this machine, build.py) and load the op; KernelUnavailable with the
    reason if not."""
    global _loaded, _error
    if _loaded:
        return
    if _error is not None:
        raise KernelUnavailable(_error)
    try:
        torch.ops.load_library(str(build("hybridlm_paged_attention", _UNITS, _HEADERS)))
    except (KernelUnavailable, OSError) as err:
        _error = f"the paged attention op could not be built or loaded: {err}"
        raise KernelUnavailable(_error) from err
    _register_fake()
    _loaded = True


def _register_fake() -> None:
    @torch.library.register_fake("hybridlm::paged_decode_attention")
    def _(q, k_pool, v_pool, block_tables, ctx_lens, block_size, window, scale):
        return q.new_empty(q.shape)


def available() -> bool:
    try:
        load()
    except KernelUnavailable:
        return False
    return True


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_tables: torch.Tensor,
                           ctx_lens: torch.Tensor, block_size: int, window: int | None = None) -> torch.Tensor:
    """One query token per sequence over its blocks. q (N, H, D) float32 CPU; k_pool, v_pool
    (R, H_kv, D) with R = n_blocks * block_size; block_tables (N, M) int32; ctx_lens (N,) int32:
    keys at positions [max(0, len - window), len). -> (N, H, D). Mutates nothing."""
    load()
    return torch.ops.hybridlm.paged_decode_attention(q, k_pool, v_pool, block_tables, ctx_lens, block_size,
                                                     window or 0, 1.0 / math.sqrt(q.shape[-1]))


def token_rows(blocks: torch.Tensor, block_size: int, length: int) -> torch.Tensor:
    """Pool rows of positions 0..length-1 of a sequence with block table `blocks` (M,) -> (length,) int64."""
    offsets = torch.arange(block_size, device=blocks.device)
    return (blocks.long()[:, None] * block_size + offsets).flatten()[:length]


def paged_decode_attention_ref(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                               block_tables: torch.Tensor, ctx_lens: torch.Tensor, block_size: int,
                               window: int | None = None) -> torch.Tensor:
    """The same result by gathering each sequence's rows and writing the softmax out, in float32."""
    out = []
    rep = q.shape[1] // k_pool.shape[1]
    for n in range(q.shape[0]):
        length = int(ctx_lens[n])
        rows = token_rows(block_tables[n], block_size, length)
        if window:
            rows = rows[max(0, length - window):]
        k = k_pool[rows].float().repeat_interleave(rep, dim=1)  # (S, H, D)
        v = v_pool[rows].float().repeat_interleave(rep, dim=1)
        scores = torch.einsum("hd,shd->hs", q[n].float(), k) / math.sqrt(q.shape[-1])
        out.append(torch.einsum("hs,shd->hd", scores.softmax(dim=-1), v))
    return torch.stack(out).to(q.dtype)
