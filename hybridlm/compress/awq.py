"""AWQ (Lin et al. 2023, arXiv:2306.00978): activation-aware weight quantization.

A few input channels carry large activations; their weights matter most. AWQ multiplies those
columns of W by s > 1 before quantizing (their relative rounding error shrinks) and divides the
layer's input by s, which is free when folded into the operation that produces the input:

    y = x W^T = (x / s) (W diag(s))^T,    s = mean|x|^alpha / sqrt(max * min)    (paper eq. 5)

With `duo` the search also tries AutoAWQ's "duo scaling" s = mean|x|^alpha / mean|w~|^(1 - alpha),
w~ = |w| over its group's absmax (a channel whose weights are already large in their groups needs
less help); the best of both families wins.
alpha is searched on a grid in [0, 1) by the layer's output error on the calibration data,
||X W^T - (X / s) Q(W diag(s))^T||^2 (alpha = 0 is plain RTN, so the search never does worse than
RTN on that data). The error of a weight change D is trace(D G D^T) with G = X^T X / n, so one
pass collects G (sequential.py) and every grid point costs one (out, in) x (in, in) product instead
of a pass over the tokens. Then, optionally, each row and group searches a clipping ratio of its
range (1.0 down to 0.55) by the same error restricted to the group (AutoAWQ's auto_clip).

Where s is folded (exact in real arithmetic; tests check the folded float model is unchanged):
- wqkv, w_in, in_proj: into the block's pre-norm weight (and bias for LayerNorm).
- wo: into the v rows of wqkv. With GQA, one v channel feeds the n_heads / n_kv_heads query heads
  of its group, so s is tied across them (their mean |x| is averaged before the power).
- w_out of a GLU MLP: into the up rows of w_in (act(gate) * up / s = h / s).
- out_proj of Mamba-2: into its gated norm's weight.
Not folded, so only clipped: w_out of a non-GLU MLP (an activation sits between), MoE experts and
router inputs (one norm feeds the router and every expert), post-norm blocks. An explicit
per-channel input scale would cover them at the cost of one multiply per token; QuantLinear does
not have one, and these are not the models this targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from ..nn.mlp import is_glu
from ..nn.norms import RMSNorm
from ..nn.quant import QuantizedWeight, QuantLinear
from .calibration import Calibration
from .config import QuantizeConfig
from .grid import UniformGrid, choose_params, encode, fake_quantize, to_quantized_weight
from .rtn import uniform_grid
from .sequential import (InputStats, block_targets, capture_block_inputs, collect, replace_module, run_block)

CLIP_RATIOS = tuple(1 - i / 20 for i in range(10))  # 1.0, 0.95, ..., 0.55


@dataclass
class ScaleGroup:
    """Linears reading one input that `fold(s)` can divide by s (channels (in,))."""

    linears: list[str]
    fold: Callable[[torch.Tensor], None]
    tie: tuple[int, int, int] | None = None  # (kv heads, query heads per kv head, head dim)


def _fold_norm(norm: nn.Module) -> Callable[[torch.Tensor], None] | None:
    if isinstance(norm, RMSNorm) or type(norm).__name__ == "GatedRMSNorm":
        return lambda s: norm.weight.data.div_(s)
    if isinstance(norm, nn.LayerNorm) and norm.weight is not None:
        def fold(s):
            norm.weight.data.div_(s)
            if norm.bias is not None:
                norm.bias.data.div_(s)
        return fold
    return None


def _fold_rows(linear: nn.Linear, start: int, stop: int, tie: tuple[int, int, int] | None = None):
    """fold(s): divide output rows start:stop of `linear` by s (for a tied s, by one of each group)."""
    def fold(s):
        if tie is not None:
            kv, rep, d = tie
            s = s.view(kv, rep, d)[:, 0].reshape(-1)
        linear.weight.data[start:stop].div_(s[:, None])
        if linear.bias is not None:
            linear.bias.data[start:stop].div_(s)
    return fold


def scale_groups(block: nn.Module, prefix: str) -> list[ScaleGroup]:
    """Where AWQ can fold input scales in this block (see the module doc)."""
    if getattr(block, "post_norm", False):
        return []
    mixer, groups = block.mixer, []
    fold_norm = _fold_norm(block.norm)
    kind = getattr(block, "kind", None)
    if kind == "attention":
        h, h_kv, d = mixer.n_heads, mixer.n_kv_heads, mixer.head_dim
        if fold_norm:
            groups.append(ScaleGroup([prefix + "mixer.wqkv"], fold_norm))
        tie = (h_kv, h // h_kv, d)
        groups.append(ScaleGroup([prefix + "mixer.wo"], _fold_rows(mixer.wqkv, (h + h_kv) * d, (h + 2 * h_kv) * d, tie), tie))
    elif kind == "mlp":
        if fold_norm:
            groups.append(ScaleGroup([prefix + "mixer.w_in"], fold_norm))
        if is_glu(mixer.kind):
            groups.append(ScaleGroup([prefix + "mixer.w_out"], _fold_rows(mixer.w_in, mixer.d_ff, 2 * mixer.d_ff)))
    elif kind == "mamba":
        if fold_norm:
            groups.append(ScaleGroup([prefix + "mixer.in_proj"], fold_norm))
        groups.append(ScaleGroup([prefix + "mixer.out_proj"], _fold_norm(mixer.norm)))
    return groups


def output_error(delta: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Sum over rows of delta_r G delta_r^T: the summed squared output error of adding delta to W."""
    return ((delta @ gram) * delta).sum()


def _tied(v: torch.Tensor, tie: tuple[int, int, int] | None) -> torch.Tensor:
    """v (in,) averaged over the query heads sharing a kv channel (one scale per kv channel)."""
    if tie is None:
        return v
    kv, rep, d = tie
    return v.view(kv, rep, d).mean(1, keepdim=True).expand(kv, rep, d).reshape(-1)


def weight_mean(weights: list[torch.Tensor], grids: list[UniformGrid]) -> torch.Tensor:
    """(in,) mean over every row of the weights of |w| / its group's absmax (AutoAWQ's w_mean)."""
    parts = []
    for w, grid in zip(weights, grids):
        g = w.abs().reshape(w.shape[0], -1, grid.group_size)
        parts.append((g / g.amax(-1, keepdim=True).clamp(min=1e-12)).reshape(w.shape))
    return torch.cat(parts).mean(0)


def search_scale(weights: list[torch.Tensor], mean_abs: torch.Tensor, gram: torch.Tensor, grids: list[UniformGrid],
                 n_grid: int = 20, tie: tuple[int, int, int] | None = None, duo: bool = False
                 ) -> tuple[torch.Tensor, float]:
    """The AWQ input scale s (in,) minimising the output error of the RTN-quantized W diag(s) over
    alpha in {0, 1/n, ..., (n-1)/n} (and, with duo, the duo-scaled family too); returns (s, alpha)."""
    x = _tied(mean_abs.float().clamp(min=1e-8), tie)
    w_mean = _tied(weight_mean(weights, grids), tie) if duo else None
    best = (float("inf"), None, 0.0)
    for i in range(n_grid):
        alpha = i / n_grid
        candidates = [x.pow(alpha)]
        if duo and alpha > 0:  # at alpha = 0 duo is 1 / w_mean alone, not a scale AWQ means
            candidates.append(x.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4))
        for s in candidates:
            s = s.clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            err = sum(output_error(w - fake_quantize(w * s, grid) / s, gram).item() for w, grid in zip(weights, grids))
            if err < best[0]:
                best = (err, s, alpha)
    return best[1], best[2]


def search_clip(w: torch.Tensor, gram: torch.Tensor, grid: UniformGrid,
                ratios: Iterable[float] = CLIP_RATIOS) -> torch.Tensor:
    """Per (row, group) clipping ratio (out, groups) minimising that group's partial output error
    delta_g G_gg delta_g^T (G_gg: the group's diagonal block of X^T X / n)."""
    out, n_in = w.shape
    g = grid.group_size
    n_groups = n_in // g
    blocks = torch.stack([gram[j * g:(j + 1) * g, j * g:(j + 1) * g] for j in range(n_groups)])  # (G, g, g)
    best_err = torch.full((out, n_groups), float("inf"))
    best = torch.ones(out, n_groups)
    for r in ratios:
        d = (w - fake_quantize(w, grid, clip=r)).view(out, n_groups, g)
        err = torch.einsum("ogc,gcd,ogd->og", d, blocks, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, r), best)
    return best


def awq_quantize(w: torch.Tensor, gram: torch.Tensor | None, grid: UniformGrid, clip: bool) -> QuantizedWeight:
    """The (already scaled) weight with optional clipping search -> QuantizedWeight."""
    w = w.detach().float()
    ratio = search_clip(w, gram, grid) if clip and gram is not None and not grid.per_tensor else 1.0
    scales, offsets = choose_params(w, grid, ratio)
    return to_quantized_weight(encode(w, scales, offsets, grid), scales, offsets, grid)


def apply_scale(group: ScaleGroup, s: torch.Tensor, linears: dict[str, nn.Linear], stats: dict[str, InputStats]) -> None:
    """Fold 1/s into the producer, s into the consumers' columns, and rescale their input stats."""
    group.fold(s)
    for name in group.linears:
        linears[name].weight.data.mul_(s)
        st = stats[name]
        st.xtx.div_(s[:, None] * s[None, :])
        st.abs_sum.div_(s)
        st.sq_sum.div_(s * s)


def awq_block(model: nn.Module, index: int, targets: dict[str, nn.Linear], batches, cfg: QuantizeConfig) -> None:
    """Search and fold the scales of block `index`, then clip and quantize its target linears."""
    block = model.blocks[index]
    inner = block_targets(targets, index)
    if not inner:
        return
    by_module = {lin: InputStats(lin.in_features) for lin in inner.values()}
    collect(block, batches, by_module)
    stats = {name: by_module[lin] for name, lin in inner.items()}
    for group in scale_groups(block, f"blocks.{index}."):
        if group.fold is None or not all(name in inner for name in group.linears):
            continue
        first = stats[group.linears[0]]
        if first.count == 0:
            continue
        weights = [inner[name].weight.detach().float() for name in group.linears]
        grids = [uniform_grid(cfg, inner[name].in_features) for name in group.linears]
        s, _ = search_scale(weights, first.mean_abs(), first.gram(), grids, cfg.awq_grid, group.tie,
                            cfg.awq_duo)
        apply_scale(group, s, inner, stats)
    for name, linear in inner.items():
        st = stats[name]
        q = awq_quantize(linear.weight, st.gram() if st.count else None, uniform_grid(cfg, linear.in_features),
                         cfg.awq_clip)
        replace_module(model, name, QuantLinear(q, linear.bias))


def awq_apply(model: nn.Module, targets: dict[str, nn.Linear], cfg: QuantizeConfig, calib: Calibration,
              progress: Callable[[Iterable], Iterable] = iter) -> None:
    """AWQ over the whole model, block by block (later blocks see the quantized earlier ones)."""
    batches = capture_block_inputs(model, calib)
    for i in progress(range(len(model.blocks))):
        awq_block(model, i, targets, batches, cfg)
        batches = run_block(model.blocks[i], batches)
    if "lm_head" in targets:  # clipping only: a tied head's columns are the embedding's
        head = targets["lm_head"]
        st = InputStats(head.in_features)
        with torch.no_grad():
            for b in batches:
                st.add(model.final_norm(b.hidden))
        q = awq_quantize(head.weight, st.gram(), uniform_grid(cfg, head.in_features), cfg.awq_clip)
        replace_module(model, "lm_head", QuantLinear(q, head.bias))
