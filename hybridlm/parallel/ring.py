"""Ring attention (Liu et al. 2023, "Ring Attention with Blockwise Transformers"): causal attention
over a sequence split in contiguous chunks across the `cp` ranks of a group, without any rank ever
holding more than two chunks of K and V.

    rank r holds queries, keys and values of tokens [r T/cp, (r+1) T/cp)
    step i = 0 .. cp-1: rank r holds the K/V block of rank s = (r - i) mod cp
        s == r  the diagonal block, causal mask
        s <  r  every key is earlier than every query: no mask
        s >  r  every key is later: skipped (causality), but the block is still passed on
        then the block goes to rank r + 1 (dist.batch_isend_irecv, which gloo and NCCL both run)
    the partial results merge by online softmax (Milakov & Gimelshein 2018): each block gives its
    output o_b and log-sum-exp l_b; l = logaddexp(l, l_b), o = o e^(l_old - l) + o_b e^(l_b - l)

Backward is a second ring (FlashAttention-2's backward per block, Dao 2023, eq. in section 3.1):
with P = exp(S - l) and delta = rowsum(dO * O), each rank adds dQ for its queries and dK, dV for
the block it holds, and the block's dK, dV travel with it, arriving home after cp steps.

Everything is computed in float32. The all-gather form (context.py `GatherKV`) is the reference
this is tested against. Not built: overlapping the transfer with the block's compute (each step's
exchange completes before its block is computed; on NCCL the isend/irecv could run on a side
stream while the block computes), and load-balanced (zig-zag) chunking.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def _expand(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _fold(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Gradient of `_expand`: (B, H_kv * n_rep, S, D) -> (B, H_kv, S, D), summed over the copies."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x.view(b, h // n_rep, n_rep, s, d).sum(2)


def _scores(q: torch.Tensor, k: torch.Tensor, diagonal: bool) -> torch.Tensor:
    """(B, H, T, T) scaled scores of q against one K block; -inf above the diagonal on the own block."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if diagonal:
        t = s.shape[-1]
        s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=s.device).tril(), float("-inf"))
    return s


def _pass_on(tensors: list[torch.Tensor], group) -> list[torch.Tensor]:
    """Send `tensors` to the next rank of the ring and receive the previous rank's."""
    n, rank = dist.get_world_size(group), dist.get_rank(group)
    nxt, prev = dist.get_global_rank(group, (rank + 1) % n), dist.get_global_rank(group, (rank - 1) % n)
    received = [torch.empty_like(t) for t in tensors]
    ops = [dist.P2POp(dist.isend, t.contiguous(), nxt, group) for t in tensors]
    ops += [dist.P2POp(dist.irecv, r, prev, group) for r in received]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return received


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group) -> torch.Tensor:
        n, rank = dist.get_world_size(group), dist.get_rank(group)
        n_rep = q.shape[1] // k.shape[1]
        qf = q.float()
        out = torch.zeros_like(qf)  # (B, H, T, D)
        lse = torch.full(qf.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)  # (B, H, T)
        block = [k.float().contiguous(), v.float().contiguous()]
        for i in range(n):
            source = (rank - i) % n
            incoming = _pass_on(block, group) if i < n - 1 else None
            if source <= rank:
                s = _scores(qf, _expand(block[0], n_rep), source == rank)
                block_lse = torch.logsumexp(s, dim=-1)
                block_out = torch.exp(s - block_lse[..., None]) @ _expand(block[1], n_rep)
                new_lse = torch.logaddexp(lse, block_lse)
                out = out * torch.exp(lse - new_lse)[..., None] + block_out * torch.exp(block_lse - new_lse)[..., None]
                lse = new_lse
            block = incoming
        ctx.group = group
        ctx.save_for_backward(q, k, v, out, lse)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        group = ctx.group
        n, rank = dist.get_world_size(group), dist.get_rank(group)
        n_rep = q.shape[1] // k.shape[1]
        qf, do = q.float(), grad_out.float()
        delta = (do * out).sum(-1, keepdim=True)  # (B, H, T, 1)
        dq = torch.zeros_like(qf)
        kb, vb = k.float().contiguous(), v.float().contiguous()
        dk, dv = torch.zeros_like(kb), torch.zeros_like(vb)
        for i in range(n):
            source = (rank - i) % n
            if source <= rank:
                ke, ve = _expand(kb, n_rep), _expand(vb, n_rep)
                p = torch.exp(_scores(qf, ke, source == rank) - lse[..., None])  # (B, H, T, T)
                dv = dv + _fold(p.transpose(-2, -1) @ do, n_rep)
                ds = p * (do @ ve.transpose(-2, -1) - delta) / math.sqrt(q.shape[-1])
                dq = dq + ds @ ke
                dk = dk + _fold(ds.transpose(-2, -1) @ qf, n_rep)
            # the block's K and V go on while there is a next rank to use them; its dK, dV always
            # go on, and after n steps they are back on the rank that owns the block
            if i < n - 1:
                kb, vb, dk, dv = _pass_on([kb, vb, dk, dv], group)
            else:
                dk, dv = _pass_on([dk, dv], group)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group) -> torch.Tensor:
    """Causal attention of this rank's chunk over the whole sequence. q (B, H, T/cp, D), k/v
    (B, H_kv, T/cp, D): this rank's chunk, rank r holding the r-th contiguous chunk of `group`.
    -> (B, H, T/cp, D) in q's dtype. A collective over `group` (forward and backward)."""
    return _RingAttention.apply(q, k, v, group)


def ring_attend(group):
    """An attention function with the layers' signature (q, k, v, mask, is_causal, dropout_p) for
    CacheStep.attend: the mask is implied by the chunk layout, so the one given is ignored."""

    def attend(q, k, v, mask, is_causal, dropout_p=0.0):
        if dropout_p:
            raise ValueError("ring attention runs without attention dropout (set dropout=0)")
        return ring_attention(q, k, v, group)

    return attend
