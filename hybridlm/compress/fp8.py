"""FP8 (e4m3 / e5m2) and FP4 (e2m1) weights, emulated in the lookup-table formats.

No CPU here multiplies in FP8 or FP4, so these store what an FP8/FP4 accelerator would hold and
decode it through a table: the codes are the float's own bit pattern and the table lists the value
of every pattern, so dequantization is exact.

- FP8 (Micikevicius et al. 2022): `lut8`, W = s * lut[q] with lut[q] the value of byte q as
  torch.float8_e4m3fn (max 448) or torch.float8_e5m2 (max 57344); NaN/inf patterns are never
  produced and read as 0 in the table. s = absmax / max per channel or group, rounded up to float16
  so w / s never leaves the finite range; rounding is torch's cast (round to nearest even).
- FP4 e2m1 (OCP Microscaling spec): `lut4`, codes sign<<3 | exponent<<1 | mantissa, values
  {0, 0.5, 1, 1.5, 2, 3, 4, 6} and their negatives, groups of 32 sharing a scale (as MXFP4; the
  spec's scale is a power of two E8M0, ours is float16 absmax / 6, a finer emulation).
"""

from __future__ import annotations

import torch

from ..nn.quant import QuantizedWeight
from .config import QuantizeConfig, group_size_for
from .grid import expand_groups
from .lut import absmax_scales, table_quantize

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
FP4_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def fp8_table(fmt: str) -> torch.Tensor:
    """(256,) float32: the value of every byte as an FP8 `fmt` number; NaN and inf read as 0."""
    values = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPES[fmt]).float()
    return torch.where(torch.isfinite(values), values, torch.zeros_like(values))


def fp8_max(fmt: str) -> float:
    return torch.finfo(FP8_DTYPES[fmt]).max


def fp4_table() -> torch.Tensor:
    """(16,) float32 indexed by the e2m1 bit pattern: codes 0-7 positive, 8-15 their negatives."""
    return torch.tensor(FP4_E2M1 + tuple(-v for v in FP4_E2M1), dtype=torch.float32)


def fp8_quantize(weight: torch.Tensor, fmt: str, group_size: int) -> QuantizedWeight:
    """weight (out, in) -> lut8 whose codes are FP8 `fmt` bytes of w / s."""
    if fmt not in FP8_DTYPES:
        raise ValueError(f"unknown FP8 format {fmt!r}; choose e4m3 or e5m2")
    w = weight.detach().float()
    top = fp8_max(fmt)
    scales = absmax_scales(w, group_size, top)
    s = expand_groups(scales.float(), group_size)
    x = (w / torch.where(s == 0, torch.ones_like(s), s)).clamp(-top, top)
    codes = x.to(FP8_DTYPES[fmt]).view(torch.uint8)
    return QuantizedWeight("lut8", codes.contiguous(), scales, group_size, w.shape[1], lut=fp8_table(fmt))


def fp8_linear(name: str, weight: torch.Tensor, cfg: QuantizeConfig, stats=None) -> QuantizedWeight:
    return fp8_quantize(weight, cfg.fp8_format, group_size_for(cfg, weight.shape[1]))


def fp4_linear(name: str, weight: torch.Tensor, cfg: QuantizeConfig, stats=None) -> QuantizedWeight:
    return table_quantize(weight, fp4_table(), group_size_for(cfg, weight.shape[1]))
