"""Expert parallelism (GShard, Lepikhin et al. 2020; DeepSpeed-MoE): each of `ep` ranks holds
n_experts / ep whole experts and its own tokens; tokens travel to their experts and back by
all-to-all (torch.distributed.nn.functional.all_to_all_single, which differentiates through).

One MoE layer on rank r, for its N local tokens (router replicated, so routing is local):

    route: gates, experts (N, k)           -> the k N choices sorted by expert (as nn/moe.py moe_fast)
    counts (E,) per expert                 -> all-to-all: how many rows each rank will receive
    rows (k N, D) sorted by expert         -> all-to-all: rank q gets the rows for its experts
    each local expert runs once per source rank on its slice
    results                                -> all-to-all back, times the gates, summed over k

The arithmetic per choice is moe_fast's (expert(x) * gate, summed over the k choices in choice
order), so the layer's output equals the unsplit layer's on the same tokens. Gradients of the
expert weights arrive from every rank's tokens through the reverse all-to-all; the replicated
parameters (attention, router, embeddings) still need the data-parallel all-reduce, as with DDP.

Not covered: a capacity limit (its drop order is global over all ranks' tokens: refused, set
moe_capacity_factor=0) and the load-balancing loss over the global batch (each rank's MoEStats
holds its own tokens' loss, as Switch Transformers computes it per core).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_to_all_single

from ..nn.moe import MoELayerStats, MoEStats, load_balancing_loss, route


class ExpertParallelMoE(nn.Module):
    """An MoE layer holding experts [rank * E / ep, (rank + 1) * E / ep). Parameter names are the
    unsplit layer's ("experts.5.w_in.weight"), so its state dict is a slice of the whole one."""

    def __init__(self, moe: nn.Module, ep_mesh):
        super().__init__()
        self.n_experts, self.k = moe.n_experts, moe.k
        self.router_kind, self.renormalize = moe.router_kind, moe.renormalize
        self.group, self.ep, rank = ep_mesh.get_group(), ep_mesh.size(), ep_mesh.get_local_rank()
        self.n_local = moe.n_experts // self.ep
        self.first = rank * self.n_local
        self.router = moe.router
        self.experts = nn.ModuleDict({str(e): moe.experts[e] for e in range(self.first, self.first + self.n_local)})
        self.shared = moe.shared

    def _exchange(self, x: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> torch.Tensor:
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        return all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=self.group)

    def _dispatch(self, tokens: torch.Tensor):
        """Route and send: -> (rows received, their per-(source, local expert) counts, send splits,
        receive splits, order, gates, routed, probs)."""
        n = tokens.shape[0]
        gates, experts, probs = route(self.router(tokens), self.k, self.router_kind, self.renormalize)
        expert = experts.t().reshape(-1)  # (k N,) choice rank, then token: moe_fast's priority order
        order = torch.argsort(expert, stable=True)
        routed = torch.bincount(expert, minlength=self.n_experts)  # (E,)
        received_counts = torch.empty_like(routed)
        dist.all_to_all_single(received_counts, routed, group=self.group)  # (ep * E_local,) by source
        send = routed.view(self.ep, self.n_local).sum(1).tolist()
        recv_counts = received_counts.view(self.ep, self.n_local)
        recv = recv_counts.sum(1).tolist()
        rows = self._exchange(tokens[order % n], recv, send)  # (sum recv, D)
        return rows, recv_counts.tolist(), send, recv, order, gates, routed, probs

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None,
                stats: MoEStats | None = None) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D), as nn.moe.MoE.forward (capacity limit not supported)."""
        b, t, d = x.shape
        flat = x.reshape(b * t, d)
        keep = None if token_mask is None else token_mask.reshape(-1).nonzero().squeeze(1)
        tokens = flat if keep is None else flat.index_select(0, keep)
        n = tokens.shape[0]
        rows, counts, send, recv, order, gates, routed, probs = self._dispatch(tokens)
        outputs, start = [], 0
        for source_counts in counts:  # rows from each source rank, grouped by local expert
            for j, count in enumerate(source_counts):
                if count:
                    outputs.append(self.experts[str(self.first + j)](rows[start:start + count]))
                start += count
        done = torch.cat(outputs) if outputs else rows[:0]
        back = self._exchange(done, send, recv)  # (k N, D) in the sorted order this rank sent
        gate = gates.t().reshape(-1)[order, None]
        y_sorted = (back * gate).to(x.dtype)
        y = y_sorted[torch.argsort(order)].view(self.k, n, d).sum(0)
        if self.shared is not None:
            y = y + self.shared(tokens)
        if stats is not None:
            stats.record(MoELayerStats(n, routed, torch.zeros_like(routed), load_balancing_loss(probs, routed, self.k)))
        if keep is not None:
            y = flat.new_zeros(flat.shape).index_copy(0, keep, y)
        return y.reshape(b, t, d)


def check_expert_parallel(cfg, ep: int) -> None:
    if "moe" not in cfg.blocks:
        raise ValueError("expert parallelism needs MoE blocks; this model has none")
    if cfg.n_experts % ep:
        raise ValueError(f"--ep {ep} does not divide n_experts = {cfg.n_experts}: each rank holds whole experts")
    if cfg.moe_capacity_factor > 0:
        raise ValueError("expert parallelism here drops no tokens: set moe_capacity_factor=0 (the capacity "
                         "order is global over every rank's tokens)")


def parallelize_experts(model: nn.Module, ep_mesh) -> None:
    """Replace every MoE block's mixer by its expert-parallel slice over the 1-D mesh `ep_mesh`
    (the other experts are dropped from this rank). Mutates the model; call before the optimizer."""
    check_expert_parallel(model.config, ep_mesh.size())
    for block in model.blocks:
        if block.kind == "moe":
            block.mixer = ExpertParallelMoE(block.mixer, ep_mesh)
