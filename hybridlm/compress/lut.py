"""Non-uniform 4-bit: NF4 (Dettmers et al. 2023, QLoRA) and a k-means lookup table.

Both store `lut4`: W = s * lut[q], q in [0, 15] (nn/quant/formats.py).

NF4: the 16 levels are quantiles of N(0, 1), normalised to [-1, 1], with an exact zero: 8 levels
from the quantiles at linspace(delta, 1/2, 9) above zero and 7 below from linspace(delta, 1/2, 8),
delta = 0.9677083 = (1 - 1/(2*15) + 1 - 1/(2*16)) / 2 (the paper's appendix, asymmetric so that
zero is a level). Each group of inputs is scaled by its absmax (QLoRA's blocks of 64; we keep the
absmax in float16, where QLoRA adds a second quantization of these constants).

k-means: the 16 levels are fitted to the weights themselves by 1-D weighted k-means (Lloyd), either
one table per row (scale 1, per-row table (out, 16)) or one table for the whole tensor fitted on
the weights divided by their group absmax. With calibration data each weight is weighted by its
input channel's mean square activation E[x_j^2] (the diagonal of X^T X), so the table spends its
levels where errors reach the output (SqueezeLLM's idea, with the diagonal instead of Fisher).
"""

from __future__ import annotations

import torch

from ..nn.quant import QuantizedWeight, pack_int4
from .config import QuantizeConfig, group_size_for
from .grid import round_f16, expand_groups

NF4_DELTA = 0.9677083


def nf4_table() -> torch.Tensor:
    """The 16 NF4 levels, float32 ascending, from -1 to 1 with an exact 0."""
    ndtri = torch.special.ndtri
    pos = ndtri(torch.linspace(NF4_DELTA, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -ndtri(torch.linspace(NF4_DELTA, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (levels / levels.abs().max()).float()


def nearest_code(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index (int64, x's shape) of the nearest entry of `table` for each element of x.

    table: (16,) for all of x, or (rows, K) with one table per row of a 2-D x. Ties go to the
    lower entry."""
    values, order = table.sort(dim=-1)
    mids = (values[..., 1:] + values[..., :-1]) / 2
    if table.dim() == 1:
        return order[torch.bucketize(x, mids)]
    return torch.gather(order, 1, torch.searchsorted(mids.contiguous(), x.contiguous()))


def absmax_scales(w: torch.Tensor, group_size: int, top: float) -> torch.Tensor:
    """float16 scales (out, groups) = group absmax / top, rounded up so |w / s| <= top."""
    absmax = w.reshape(w.shape[0], -1, group_size).abs().amax(-1)
    return round_f16(absmax / top, 1)


def table_quantize(w: torch.Tensor, table: torch.Tensor, group_size: int) -> QuantizedWeight:
    """lut4 with per-group absmax scales onto a fixed 16-entry table whose largest |entry| is the top."""
    w = w.detach().float()
    scales = absmax_scales(w, group_size, table.abs().max().item())
    s = expand_groups(scales.float(), group_size)
    codes = nearest_code(w / torch.where(s == 0, torch.ones_like(s), s), table)
    return QuantizedWeight("lut4", pack_int4(codes.to(torch.uint8)), scales, group_size, w.shape[1],
                           lut=table.float().contiguous())


def nf4_linear(name: str, weight: torch.Tensor, cfg: QuantizeConfig, stats=None) -> QuantizedWeight:
    return table_quantize(weight, nf4_table(), group_size_for(cfg, weight.shape[1]))


# -- k-means ------------------------------------------------------------------------------------

def weighted_kmeans_1d(x: torch.Tensor, weight: torch.Tensor, k: int = 16, iters: int = 25) -> torch.Tensor:
    """Lloyd's algorithm on each row of x (rows, n) with element weights (rows, n) > 0.

    Returns centroids (rows, k) ascending. Starts from the NF4 levels times the row's absmax: each
    Lloyd step can only lower the weighted error, so the result is never worse than NF4 with a
    per-row absmax (starting from quantiles instead leaves too few levels in the tails, and 25 steps
    do not recover them). In one dimension nearest-centroid cells are intervals, so sorted centroids
    stay sorted. An empty cell keeps its centroid."""
    if k != 16:
        raise ValueError("the k-means table has 16 entries (4-bit codes)")
    cent = (nf4_table()[None, :] * x.abs().amax(1, keepdim=True)).contiguous()  # (rows, k)
    for _ in range(iters):
        idx = nearest_code(x, cent)  # (rows, n): cent is sorted, so idx is the sorted position
        sums = torch.zeros_like(cent).scatter_add_(1, idx, weight * x)
        mass = torch.zeros_like(cent).scatter_add_(1, idx, weight)
        new = torch.where(mass > 0, sums / mass.clamp(min=torch.finfo(x.dtype).tiny), cent)
        new = new.sort(dim=1).values
        if torch.equal(new, cent):
            break
        cent = new
    return cent


def kmeans_quantize(weight: torch.Tensor, per: str, group_size: int, channel_weight: torch.Tensor | None = None,
                    iters: int = 25) -> QuantizedWeight:
    """lut4 with k-means levels. per "row": a table per row, scale 1 (group = in_features);
    per "tensor": one table fitted on w / group absmax. channel_weight (in,): E[x_j^2] or None."""
    w = weight.detach().float()
    out, n_in = w.shape
    imp = torch.ones_like(w) if channel_weight is None else channel_weight.float().clamp(min=1e-12).expand(out, n_in)
    if per == "row":
        table = weighted_kmeans_1d(w, imp, iters=iters)  # (out, 16)
        codes = nearest_code(w, table)
        scales = torch.ones(out, 1, dtype=torch.float16)
        return QuantizedWeight("lut4", pack_int4(codes.to(torch.uint8)), scales, n_in, n_in, lut=table.contiguous())
    scales = absmax_scales(w, group_size, 1.0)
    s = expand_groups(scales.float(), group_size)
    normalised = w / torch.where(s == 0, torch.ones_like(s), s)
    # the error in w is s times the error in w / s: weight by s^2 as well
    table = weighted_kmeans_1d(normalised.reshape(1, -1), (imp * s * s).reshape(1, -1).clamp(min=1e-30),
                               iters=iters)[0]
    codes = nearest_code(normalised, table)
    return QuantizedWeight("lut4", pack_int4(codes.to(torch.uint8)), scales, group_size, n_in, lut=table.contiguous())


def kmeans_linear(name: str, weight: torch.Tensor, cfg: QuantizeConfig, stats=None) -> QuantizedWeight:
    """The registry's per-linear entry; stats (calibration, optional) gives the channel weights."""
    channel_weight = None if stats is None else stats.mean_square()
    return kmeans_quantize(weight, cfg.kmeans_per, group_size_for(cfg, weight.shape[1]), channel_weight,
                           cfg.kmeans_iters)
