"""Mixture of experts: a router sends each token to k of n expert MLPs (Shazeer et al. 2017; Switch
Transformers, Fedus et al. 2021; GShard, Lepikhin et al. 2020; Mixtral, Jiang et al. 2024).

    y(x) = shared(x) + sum over e in topk(x) of g_e(x) * expert_e(x)

Routing, from the router logits l = x W_r^T (computed in float32 from here on):
  softmax: p = softmax(l) over all experts; take the k largest; g = p_topk, divided by their sum when
           `moe_renormalize` (Mixtral). Switch (k = 1) keeps g = p, so the router learns through g.
  sigmoid: s = sigmoid(l) per expert, independently; take the k largest; g = s_topk / sum(s_topk) when
           `moe_renormalize` (DeepSeek-V3 and other recent models).
Capacity (Switch eq. 3, counting each of a token's k choices as GShard and DeepSpeed do for top-2):
  C = ceil(factor * k * N / E) choices per expert in a forward of N tokens. Choices queue at their
  expert in priority order: every token's first choice (in token order), then every second choice,
  and so on; those past C are dropped. A dropped choice adds nothing, so a token whose every choice
  is dropped passes through the residual only (plus the shared expert, which has no capacity).
Load balancing (Switch eq. 4-6): loss = E * sum_i f_i * P_i, with f_i the fraction of the N*k choices
  routed to expert i before capacity drops and P_i the mean router probability of expert i (sigmoid
  scores normalised over the experts of each token). A perfectly balanced router scores 1.

Two implementations, chosen by `moe_impl`: `moe_fast` groups the choices by expert with one sort and
runs each expert once on its tokens; `moe_ref` walks the tokens one at a time. Tests pin them together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from .mlp import MLP


@dataclass
class MoELayerStats:
    """What one MoE block did in one forward."""

    tokens: int  # tokens routed (padding excluded)
    routed: torch.Tensor  # (E,) int64: choices sent to each expert, before the capacity limit
    dropped: torch.Tensor  # (E,) int64: of those, how many overflowed the capacity
    aux_loss: torch.Tensor  # () float32: Switch load-balancing loss, unscaled, differentiable


class MoEStats:
    """An explicit collector of expert utilisation, passed by the caller to `Decoder.forward(...,
    moe_stats=stats)`; every MoE block appends one `MoELayerStats` per forward, in layer order.

    Nothing is kept on the modules. Use a fresh collector (or `clear()`) for each step you log;
    a trainer adds `cfg.moe_aux_loss_coef * stats.aux_loss` to its loss.
    """

    def __init__(self) -> None:
        self.layers: list[MoELayerStats] = []

    def record(self, layer: MoELayerStats) -> None:
        self.layers.append(layer)

    def clear(self) -> None:
        self.layers.clear()

    @property
    def aux_loss(self) -> torch.Tensor:
        """Sum of the layers' load-balancing losses, () float32 (0 when nothing was recorded)."""
        if not self.layers:
            return torch.zeros(())
        return torch.stack([s.aux_loss for s in self.layers]).sum()

    @property
    def routed(self) -> torch.Tensor:
        """(n_records, E) int64: choices sent to each expert, one row per recorded layer."""
        return torch.stack([s.routed for s in self.layers])

    @property
    def dropped(self) -> torch.Tensor:
        """(n_records, E) int64: choices dropped by the capacity limit."""
        return torch.stack([s.dropped for s in self.layers])

    def summary(self) -> dict[str, float]:
        """Scalars for a training log (reads the tensors back to the host once)."""
        routed, dropped = self.routed.double(), self.dropped.double()
        load = routed / routed.sum(-1, keepdim=True).clamp(min=1)  # (L, E) fraction per expert
        return {
            "moe_aux_loss": float(self.aux_loss.detach()),
            "moe_dropped_fraction": float(dropped.sum() / routed.sum().clamp(min=1)),
            # 1.0 when every expert gets its share; E when one expert gets everything
            "moe_max_load": float(load.max(-1).values.mean() * routed.shape[-1]),
        }


def route(logits: torch.Tensor, k: int, router: str, renormalize: bool):
    """Router logits (N, E) -> (gates (N, k) float32, experts (N, k) int64, probs (N, E) float32).

    Experts come largest score first; probs are what the load-balancing loss averages.
    """
    logits = logits.float()  # the softmax over experts in float32, as transformers' Mixtral does
    scores = logits.softmax(-1) if router == "softmax" else logits.sigmoid()
    gates, experts = scores.topk(k, dim=-1)
    if renormalize:
        gates = gates / gates.sum(-1, keepdim=True)
    probs = scores if router == "softmax" else scores / scores.sum(-1, keepdim=True)
    return gates, experts, probs


def expert_capacity(n_tokens: int, k: int, n_experts: int, factor: float) -> int | None:
    """Choices one expert takes in a forward of n_tokens: ceil(factor * k * n_tokens / n_experts);
    None (no limit) when factor is 0."""
    return math.ceil(factor * k * n_tokens / n_experts) if factor > 0 else None


def load_balancing_loss(probs: torch.Tensor, routed: torch.Tensor, k: int) -> torch.Tensor:
    """Switch eq. 4: E * sum_i f_i P_i. probs (N, E) float32, routed (E,) choices per expert."""
    n, n_experts = probs.shape
    f = routed.to(probs.dtype) / (n * k)
    return n_experts * (f * probs.mean(0)).sum()


def _no_tokens(moe: "MoE", x: torch.Tensor) -> tuple[torch.Tensor, MoELayerStats]:
    zeros = torch.zeros(moe.n_experts, dtype=torch.long, device=x.device)
    return torch.zeros_like(x), MoELayerStats(0, zeros, zeros.clone(), torch.zeros((), device=x.device))


def moe_fast(moe: "MoE", x: torch.Tensor) -> tuple[torch.Tensor, MoELayerStats]:
    """Routed experts' output for tokens x (N, D) -> (N, D), grouping the choices by expert.

    One stable sort of the (k * N) choices by expert keeps the priority order within each expert's
    group, so the capacity limit keeps a prefix of each group and each expert runs once on a
    contiguous slice. The results go back by the inverse permutation and a sum over the k choices:
    no scatter-add, so the sum order is fixed (deterministic on GPU too).
    """
    n, k, n_experts = x.shape[0], moe.k, moe.n_experts
    if n == 0:
        return _no_tokens(moe, x)
    gates, experts, probs = route(moe.router(x), k, moe.router_kind, moe.renormalize)
    expert = experts.t().reshape(-1)  # (k * N,) priority order: choice rank, then token
    order = torch.argsort(expert, stable=True)
    routed = torch.bincount(expert, minlength=n_experts)  # (E,)
    cap = expert_capacity(n, k, n_experts, moe.capacity_factor)
    kept = routed if cap is None else routed.clamp(max=cap)
    x_sorted = x[order % n]  # (k * N, D) grouped by expert
    gate = gates.t().reshape(-1)[order, None]  # (k * N, 1) float32
    starts, counts = (routed.cumsum(0) - routed).tolist(), kept.tolist()  # one host sync per layer
    y_sorted = torch.zeros_like(x_sorted)  # dropped choices stay zero
    for e, (start, count) in enumerate(zip(starts, counts)):
        if count:
            rows = slice(start, start + count)
            y_sorted[rows] = (moe.experts[e](x_sorted[rows]) * gate[rows]).to(x.dtype)
    out = y_sorted[torch.argsort(order)].view(k, n, -1).sum(0)  # back to (choice, token), sum choices
    stats = MoELayerStats(n, routed, routed - kept, load_balancing_loss(probs, routed, k))
    return out, stats


def moe_ref(moe: "MoE", x: torch.Tensor) -> tuple[torch.Tensor, MoELayerStats]:
    """The reference: route each token on its own, then serve the choices one at a time in priority
    order (every first choice in token order, then every second choice, ...), counting each expert's
    load against its capacity. x (N, D) -> (N, D), as `moe_fast`."""
    n, k, n_experts = x.shape[0], moe.k, moe.n_experts
    if n == 0:
        return _no_tokens(moe, x)
    w_router = moe.router.weight.float()  # (E, D)
    choices, probs = [], []
    for t in range(n):
        logits = w_router @ x[t].float()  # (E,)
        if moe.router_kind == "softmax":
            scores = torch.exp(logits - logits.max())
            scores = scores / scores.sum()
            probs.append(scores)
        else:
            scores = 1.0 / (1.0 + torch.exp(-logits))
            probs.append(scores / scores.sum())
        values = scores.tolist()
        ranked = sorted(range(n_experts), key=lambda e: -values[e])[:k]
        gates = [scores[e] for e in ranked]
        if moe.renormalize:
            total = sum(gates)
            gates = [g / total for g in gates]
        choices.append(list(zip(ranked, gates)))
    cap = expert_capacity(n, k, n_experts, moe.capacity_factor)
    load, routed, dropped = [0] * n_experts, [0] * n_experts, [0] * n_experts
    rows = [torch.zeros_like(x[t]) for t in range(n)]
    for j in range(k):
        for t in range(n):
            e, g = choices[t][j]
            routed[e] += 1
            if cap is not None and load[e] >= cap:
                dropped[e] += 1
                continue
            load[e] += 1
            rows[t] = rows[t] + (g * moe.experts[e](x[t:t + 1])[0]).to(x.dtype)
    mean_probs = torch.stack(probs).mean(0)  # P_i
    aux = n_experts * sum(routed[i] / (n * k) * mean_probs[i] for i in range(n_experts))
    routed_t, dropped_t = (torch.tensor(v, dtype=torch.long, device=x.device) for v in (routed, dropped))
    return torch.stack(rows), MoELayerStats(n, routed_t, dropped_t, aux)


class MoE(nn.Module):
    """Router + `n_experts` expert MLPs (+ an optional shared expert), per token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.k = cfg.n_experts, cfg.n_experts_per_token
        self.router_kind, self.renormalize = cfg.moe_router, cfg.moe_renormalize
        self.capacity_factor, self.impl = cfg.moe_capacity_factor, cfg.moe_impl
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg, cfg.moe_d_ff) for _ in range(cfg.n_experts))
        self.shared = MLP(cfg, cfg.moe_shared_expert_d_ff) if cfg.moe_shared_expert_d_ff else None

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None,
                stats: MoEStats | None = None) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D).

        token_mask (B, T) bool: False for padding, which is not routed (takes no capacity, is not
        counted) and gets zeros. stats: appended to with this layer's MoELayerStats.
        """
        b, t, d = x.shape
        flat = x.reshape(b * t, d)
        keep = None if token_mask is None else token_mask.reshape(-1).nonzero().squeeze(1)
        tokens = flat if keep is None else flat.index_select(0, keep)
        y, layer_stats = (moe_ref if self.impl == "ref" else moe_fast)(self, tokens)
        if self.shared is not None:
            y = y + self.shared(tokens)
        if stats is not None:
            stats.record(layer_stats)
        if keep is not None:
            y = flat.new_zeros(flat.shape).index_copy(0, keep, y)
        return y.reshape(b, t, d)
