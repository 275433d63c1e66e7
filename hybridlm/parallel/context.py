"""Context parallelism by all-gathering K and V (Llama 3's context parallelism; the simple sibling of
ring attention, Liu et al. 2023): each of `cp` ranks holds a contiguous chunk of every sequence, T/cp
tokens, and runs the whole model on it.

    rank r: tokens [r T/cp, (r+1) T/cp) -> embeddings, RoPE and MLPs on its chunk only
    attention: q on the chunk; K and V all-gathered from every rank (`_GatherTokens`, whose
               backward sums the gradients over ranks), causal mask by position

It rides on the cache door the layers already have: attention asks its slot to `update(k, v)` and
attends over what comes back, so the slot here returns the gathered sequence and no layer changes.
Parameters are replicated: their gradients need the all-reduce over the cp group that data
parallelism does (each rank's loss is its chunk's share of the sequence's mean).

Not covered: ring attention's overlap of K/V passing with compute (all-gather holds the whole
sequence's K and V on each rank: fine to ~100k tokens of a GQA model, not beyond), load-balanced
(zig-zag) chunking (rank 0's causal attention does the least work), and Mamba blocks, whose scan
would need the previous chunk's final state passed rank to rank: refused.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.distributed as dist

from ..cache import CacheStep


class _GatherTokens(torch.autograd.Function):
    """All-gather along the token dimension (dim 0); backward: each rank's share of the summed
    gradient. The sum is an all-reduce of the whole gradient, not a reduce-scatter: gloo has no
    reduce-scatter, and torch.distributed.nn's all-to-all stand-in for it gave wrong gradients on
    gloo here (tests/parallel/cp_worker.py). On NCCL a reduce-scatter would send half the bytes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group, ctx.rank, ctx.n = group, dist.get_rank(group), x.shape[0]
        pieces = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(pieces, x.contiguous(), group=group)
        return torch.cat(pieces, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None


class GatherKV:
    """A cache slot that attends over the whole sequence: K and V (B, H_kv, T/cp, D) from every rank,
    concatenated in rank order -> (B, H_kv, T, D)."""

    def __init__(self, group):
        self.group = group

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gather(k), self._gather(v)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        whole = _GatherTokens.apply(x.permute(2, 0, 1, 3), self.group)  # (T, B, H_kv, D), tokens first
        return whole.permute(1, 2, 0, 3)  # (B, H_kv, T, D)


class _Slots:
    def __init__(self, slots: list):
        self.slots = slots


def check_context_parallel(model: nn.Module, cp: int, seq_len: int) -> None:
    cfg = model.config
    if cfg.family != "decoder":
        raise ValueError(f"context parallelism covers decoder models; this is a {cfg.family} model")
    if "mamba" in cfg.blocks:
        raise ValueError("context parallelism does not split Mamba blocks (the scan state would have to pass "
                         "from rank to rank); use --tp for hybrid models")
    if cfg.position == "alibi" or cfg.sliding_window is not None:
        raise ValueError("context parallelism here supports full causal attention with RoPE, learned or no "
                         "positions (not ALiBi or sliding windows)")
    if seq_len % cp:
        raise ValueError(f"--cp {cp} does not divide the sequence length {seq_len}")


def context_parallel_forward(model: nn.Module, input_ids: torch.Tensor, cp_mesh, seq_len: int) -> torch.Tensor:
    """This rank's logits (B, T/cp, V) for its chunk input_ids (B, T/cp) of sequences of seq_len
    tokens (the chunks of ranks 0..cp-1 in order make the sequence). A collective over cp_mesh."""
    cp, rank = cp_mesh.size(), cp_mesh.get_local_rank()
    check_context_parallel(model, cp, seq_len)
    b, t = input_ids.shape
    if t * cp != seq_len:
        raise ValueError(f"each rank holds seq_len / cp = {seq_len // cp} tokens, got {t}")
    device = input_ids.device
    q_pos = torch.arange(rank * t, (rank + 1) * t, device=device).expand(b, t)
    k_pos = torch.arange(seq_len, device=device).expand(b, seq_len)
    step = CacheStep(q_pos=q_pos, k_pos=k_pos, trivial=False, n_new=t)  # mask: keys at or before each query
    gather = GatherKV(cp_mesh.get_group())
    slots = _Slots([gather if kind == "attention" else None for kind in model.config.blocks])
    return model.forward_planned(input_ids, step, slots)
