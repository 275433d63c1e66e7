"""GPTQ (Frantar et al. 2022, arXiv:2210.17323): quantize a weight column by column, each column's
rounding error pushed onto the columns not yet quantized, weighted by the inverse Hessian of the
layer's squared output error.

For a linear with calibration inputs X (n, in), the error ||X W^T - X Q^T||^2 has Hessian
H = 2 X^T X / n (sequential.py collects it). The paper's Algorithm 1, as implemented here:

    H += damp * mean(diag H) * I                          (damping; dead inputs get H_jj = 1, W_j = 0)
    U = Cholesky(H^-1), upper                              (the rows of H^-1 each step needs, eq. 3-5)
    for each block of B = 128 columns (lazy batch):
        for column j in the block:
            q_j = quant(w_j);  e = (w_j - q_j) / U_jj
            w_{j+1..block end} -= e U_{j, j+1..block end}  (inside the block, column by column)
        w_{after block} -= E U_{block, after block}        (one matmul per block)

Scales: "dynamic" groups (the paper's code) fix a group's float16 scales (and offsets) when its
first column is reached, from the weights as updated so far, and then encode each column against
those fixed float16 values, so the stored codes are exactly the ones whose error was propagated.
Per-channel and per-tensor scales are computed once from the initial weights.

Act-order (`act_order`, the "desc_act" of GPTQ implementations) visits columns in decreasing
diag(H). With groups it uses *static groups*: every group's scales are computed from the initial
weights before the sweep, and column j, wherever act-order places it, is encoded with the scales of
its own original group j // group_size. The permutation is then undone in storage, so the stored
weight is a plain grouped weight in the original column order (no g_idx, no reordering at run
time; a group-32 result is still a GGUF Q4_0/Q4_1 tensor). The price is that a group's scales do
not see the updates GPTQ made to its weights; dynamic groups under act-order would scatter each
group over the permuted order and need a per-column group index, which the format does not have.
"""

from __future__ import annotations

import torch

from ..nn.quant import QuantizedWeight
from .config import CompressError, QuantizeConfig
from .grid import UniformGrid, choose_params, to_quantized_weight
from .rtn import uniform_grid
from .awq import search_clip


def inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, float32 (in, in); computed in
    float64 (cheap at these sizes, and it keeps ill-conditioned H from failing). A failure retries
    with ten times the damping, twice."""
    h = h.double()
    mean_diag = h.diagonal().mean().clamp(min=1e-12)
    eye = torch.eye(h.shape[0], dtype=torch.float64)
    for attempt in range(3):
        chol, info = torch.linalg.cholesky_ex(h + damp * 10 ** attempt * mean_diag * eye)
        if info == 0:
            inv = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if info == 0:
                return upper.float()
    raise CompressError(f"GPTQ: the Hessian is not positive definite even with damping {damp * 100:g}; "
                        "use more calibration tokens or a larger --damp")


def round_column(x: torch.Tensor, s: torch.Tensor, safe: torch.Tensor, m: torch.Tensor | None, bits: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One column x (out,) -> (codes as float, their dequantized values), computed exactly as
    grid.quantize_values and grid.dequantize_values (so as dequantize_ref) compute them.
    s, safe (s with zeros replaced by 1), m: float32 (out,)."""
    if bits == 8:
        q = torch.round(x / safe).clamp_(-128, 127)
        return q, s * q
    if m is None:
        q = torch.round(x / safe).add_(8).clamp_(0, 15)
        return q, s * (q - 8)
    q = torch.round((x - m) / safe).clamp_(0, 15)
    return q, s * q + m


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, grid: UniformGrid, act_order: bool = False,
                  damp: float = 0.01, block_size: int = 128, clip: bool = False) -> QuantizedWeight:
    """weight (out, in) float, hessian (in, in) = 2 X^T X / n -> QuantizedWeight (int4 or int8).
    clip: each group's range is shrunk by the ratio AWQ's clip search picks (awq.search_clip) for the
    weights it is computed from, by the group's block of H."""
    w = weight.detach().float().clone()
    h = hessian.float().clone()
    n_out, n_in = w.shape
    g = grid.group_size
    dead = h.diagonal() == 0  # inputs never active in calibration: their weights cannot matter there
    h[dead, dead] = 1
    w[:, dead] = 0
    static = act_order or g == n_in  # parameters fixed from the initial weights
    clip = clip and not grid.per_tensor
    ratio = search_clip(w, h, grid) if clip and static else 1.0
    scales, offsets = choose_params(w, grid, ratio)  # (out, groups); dynamic groups overwrite theirs below
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(n_in)
    w, h = w[:, perm], h[perm][:, perm]
    u = inverse_hessian_factor(h, damp)
    codes = torch.empty(n_out, n_in)  # float: exact small integers, converted once at the end
    group_grid = UniformGrid(grid.bits, grid.symmetric, g)
    # per group, float32 rows (groups, out): the column loop runs ~10^5 times on a real model, so
    # it indexes ready tensors instead of converting scales on every column
    s_t = scales.float().T.contiguous()
    m_t = None if offsets is None else offsets.float().T.contiguous()
    safe_t = torch.where(s_t == 0, torch.ones_like(s_t), s_t)
    cols = perm.tolist()
    # a block holds whole groups, so a dynamic group's columns are all up to date when it starts
    block = block_size if static or block_size % g == 0 else g * -(-block_size // g)
    for i1 in range(0, n_in, block):
        i2 = min(i1 + block, n_in)
        w1, err1, u1 = w[:, i1:i2].clone(), torch.zeros(n_out, i2 - i1), u[i1:i2, i1:i2]
        for k in range(i2 - i1):
            col = cols[i1 + k]
            j = col // g
            if not static and col % g == 0:
                wg, hg = w1[:, k:k + g], h[i1 + k:i1 + k + g, i1 + k:i1 + k + g]
                s_new, m_new = choose_params(wg, group_grid, search_clip(wg, hg, group_grid) if clip else 1.0)
                scales[:, j] = s_new[:, 0]
                s_t[j] = s_new[:, 0].float()
                safe_t[j] = torch.where(s_t[j] == 0, torch.ones_like(s_t[j]), s_t[j])
                if offsets is not None:
                    offsets[:, j] = m_new[:, 0]
                    m_t[j] = m_new[:, 0].float()
            q, deq = round_column(w1[:, k], s_t[j], safe_t[j], None if m_t is None else m_t[j], grid.bits)
            codes[:, i1 + k] = q
            e = (w1[:, k] - deq) / u1[k, k]
            w1[:, k:].addr_(e, u1[k, k:], alpha=-1)
            err1[:, k] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    stored = torch.empty(n_out, n_in, dtype=torch.long)
    stored[:, perm] = codes.long()  # back to the original column order
    return to_quantized_weight(stored, scales, offsets, grid)


def gptq_linear(name: str, linear: torch.nn.Linear, cfg: QuantizeConfig, stats) -> QuantizedWeight:
    """The registry's entry: one linear with its collected input statistics."""
    if stats.count == 0:  # never ran on the calibration data (an MoE expert no token chose)
        from .rtn import rtn_quantize

        return rtn_quantize(linear.weight, uniform_grid(cfg, linear.in_features))
    return gptq_quantize(linear.weight, stats.hessian(), uniform_grid(cfg, linear.in_features),
                         cfg.act_order, cfg.damp, cfg.block_size, cfg.gptq_clip)
