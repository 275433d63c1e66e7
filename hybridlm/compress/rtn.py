"""Round-to-nearest (RTN): each weight to the nearest level of its group's uniform grid.

The baseline every other quantizer is measured against; no calibration data. Per element,
|w - dequantized| <= s / 2 (grid.py explains the scale choice that guarantees it).
"""

from __future__ import annotations

import torch

from ..nn.quant import QuantizedWeight
from .config import QuantizeConfig, group_size_for
from .grid import UniformGrid, choose_params, encode, to_quantized_weight


def uniform_grid(cfg: QuantizeConfig, in_features: int) -> UniformGrid:
    """The grid `cfg` asks for on a linear with `in_features` inputs (cfg already resolved)."""
    return UniformGrid(cfg.bits, cfg.symmetric, group_size_for(cfg, in_features), cfg.group_size == "tensor")


def rtn_quantize(weight: torch.Tensor, grid: UniformGrid) -> QuantizedWeight:
    """weight (out, in) float -> its round-to-nearest QuantizedWeight (int4 or int8)."""
    w = weight.detach().float()
    scales, offsets = choose_params(w, grid)
    return to_quantized_weight(encode(w, scales, offsets, grid), scales, offsets, grid)


def rtn_linear(name: str, weight: torch.Tensor, cfg: QuantizeConfig, stats=None) -> QuantizedWeight:
    """The registry's per-linear entry for RTN."""
    return rtn_quantize(weight, uniform_grid(cfg, weight.shape[1]))
