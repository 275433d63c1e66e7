"""Context parallelism: each of `cp` ranks holds a contiguous chunk of every sequence, T/cp tokens,
and runs the whole model on it. Two forms of the attention, chosen by `attention`:

    rank r: tokens [r T/cp, (r+1) T/cp) -> embeddings, RoPE and MLPs on its chunk only
    "ring"       K/V blocks passed rank to rank, online-softmax merge (ring.py; Liu et al. 2023):
                 no rank holds more than two chunks of K and V
    "allgather"  q on the chunk; K and V all-gathered from every rank (`_GatherTokens`, whose
                 backward sums the gradients over ranks), causal mask by position (Llama 3's
                 context parallelism): the whole sequence's K/V on every rank, the simple reference

Both ride on the cache door the layers already have (`ContextParallelCache`, passed to the model's
own forward, so DDP and FSDP2 wrappers see an ordinary call): for "allgather" attention asks its
slot to `update(k, v)` and attends over what comes back; for "ring" the step's `attend` replaces the
layers' attention function. No layer changes. Parameters are replicated: their gradients need the
all-reduce over the cp group that data parallelism does (each rank's loss is its chunk's share of
the sequence's mean; DDP over the dp x cp ranks averages the chunk means, see train/).

Not covered: load-balanced (zig-zag) chunking (rank 0's causal attention does the least work), and
Mamba blocks, whose scan would need the previous chunk's final state passed rank to rank: refused.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.distributed as dist

from ..cache import CacheStep
from .ring import ring_attend

ATTENTIONS = ("ring", "allgather")


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


class ContextParallelCache:
    """The cache-shaped plan of one context-parallel forward: `Decoder.forward(ids, cache=this)`
    asks it for the step (this rank's positions, every key's) and the layers' slots; nothing is
    stored, so one object serves every forward over chunks of seq_len tokens."""

    def __init__(self, model: nn.Module, cp_mesh, seq_len: int, attention: str = "ring"):
        if attention not in ATTENTIONS:
            raise ValueError(f"context-parallel attention must be one of {ATTENTIONS}, got {attention!r}")
        self.cp, self.rank, self.seq_len = cp_mesh.size(), cp_mesh.get_local_rank(), seq_len
        check_context_parallel(model.config, self.cp, seq_len)
        self.device = next(model.parameters()).device
        group = cp_mesh.get_group()
        self.attend = ring_attend(group) if attention == "ring" else None
        gather = None if attention == "ring" else GatherKV(group)
        self.slots = [gather if kind == "attention" else None for kind in model.config.blocks]

    def plan(self, t: int, attention_mask=None) -> CacheStep:
        if attention_mask is not None:
            raise ValueError("context parallelism takes unpadded sequences (no attention_mask)")
        if t * self.cp != self.seq_len:
            raise ValueError(f"each rank holds seq_len / cp = {self.seq_len // self.cp} tokens, got {t}")
        q_pos = torch.arange(self.rank * t, (self.rank + 1) * t, device=self.device)[None]  # (1, T/cp): every row alike
        k_pos = torch.arange(self.seq_len, device=self.device)[None]
        # the mask (keys at or before each query) is built from these for "allgather"; the ring knows it
        return CacheStep(q_pos=q_pos, k_pos=k_pos, trivial=False, n_new=t, attend=self.attend)

    def commit(self, step: CacheStep) -> None:
        pass


def check_context_parallel(cfg, cp: int, seq_len: int) -> None:
    """Raise ValueError naming what `cfg` (a ModelConfig, or a model holding one) cannot split."""
    cfg = getattr(cfg, "config", cfg)
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


def context_parallel_forward(model: nn.Module, input_ids: torch.Tensor, cp_mesh, seq_len: int,
                             attention: str = "ring") -> torch.Tensor:
    """This rank's logits (B, T/cp, V) for its chunk input_ids (B, T/cp) of sequences of seq_len
    tokens (the chunks of ranks 0..cp-1 in order make the sequence). A collective over cp_mesh."""
    return model(input_ids, cache=ContextParallelCache(model, cp_mesh, seq_len, attention))


def local_chunk(x: torch.Tensor, cp_mesh) -> torch.Tensor:
    """This rank's contiguous chunk of x (B, T, ...) along the tokens -> (B, T/cp, ...)."""
    return x.chunk(cp_mesh.size(), dim=1)[cp_mesh.get_local_rank()]
