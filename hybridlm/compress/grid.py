"""The uniform integer grid every uniform quantizer (RTN, GPTQ, AWQ) shares: how scales and
offsets are chosen, and how a weight becomes codes on that grid.

The stored formats are those of `nn/quant/formats.py`:

    int4 symmetric   W = s * (q - 8)     q in [0, 15]   (llama.cpp Q4_0 at group 32)
    int4 asymmetric  W = s * q + m       q in [0, 15]   (Q4_1 at group 32)
    int8             W = s * q           q in [-128, 127] (Q8_0 at group 32; no asymmetric int8)

Order matters for export: the float16 scales (and offsets) are fixed first, and the codes are then
computed against those float16 values, so `dequantize_ref` of what is stored is exactly the value
each quantizer measured its error against, and a group of 32 is a valid GGUF block bit for bit.

Scale choice (round to nearest, the RTN error bound |w - deq| <= s/2 for every element):
- symmetric: s = absmax / (2^(b-1) - 1/2), rounded *up* to float16. The positive end of the grid
  is (2^(b-1) - 1) s, so +absmax is at most half a step away; the negative end has one level to
  spare. (llama.cpp's Q4_0 instead maps the signed extreme to -8 exactly, which can leave the
  opposite extreme a whole step away: a lower MSE on some blocks, no per-element bound.)
- asymmetric: m = min rounded *down* to float16, s = (max - m) / (2^b - 1) rounded to nearest;
  every weight then lies in [m, m + 15.5 s). Weights that already sit on a Q4_1 grid (the
  dequantized GGUF) get back the block's own m and d, so their codes reproduce them exactly.
The directed rounding is what keeps the bound after the float16 cast.

Granularity: `group_size` consecutive inputs of one row share a scale; per-channel is
group_size = in_features; per-tensor is also group_size = in_features, with the one scale computed
over the whole tensor and repeated on every row (the format stores one scale per row and group,
so per-tensor is a "fake group" whose rows all hold the same value).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..nn.quant import QuantizedWeight, pack_int4


@dataclass(frozen=True)
class UniformGrid:
    """bits 4 or 8; symmetric or not (int8 is symmetric only); group_size inputs per scale;
    per_tensor: one scale (and offset) for the whole tensor, stored on every row."""

    bits: int
    symmetric: bool
    group_size: int
    per_tensor: bool = False

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"the uniform grid has 4 or 8 bits, not {self.bits}")
        if self.bits == 8 and not self.symmetric:
            raise ValueError("int8 is symmetric only (the int8 format has no offsets); use --symmetric or --bits 4")

    @property
    def levels(self) -> int:
        return 2 ** self.bits

    @property
    def half_range(self) -> float:
        """absmax / s for the symmetric scale: the positive end plus half a step."""
        return self.levels / 2 - 0.5


def round_f16(x: torch.Tensor, direction: int) -> torch.Tensor:
    """float32 -> float16 rounded toward +inf (direction 1) or -inf (-1), never to the other side."""
    h = x.half()
    off = (h.float() < x) if direction > 0 else (h.float() > x)
    target = torch.full_like(h, float("inf") if direction > 0 else float("-inf"))
    return torch.where(off, torch.nextafter(h, target), h)


def _groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """(out, in) -> (out, in // group_size, group_size), a view."""
    return w.reshape(w.shape[0], -1, group_size)


def choose_params(w: torch.Tensor, grid: UniformGrid, clip: torch.Tensor | float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scales (and offsets for asymmetric) for w (out, in) float32: float16 (out, in // group_size).

    clip: a factor <= 1 (scalar or (out, groups)) shrinking each group's range toward zero, as
    AWQ's clipping search does; 1 keeps the full range and the RTN bound.
    """
    g = _groups(w.float(), grid.group_size)
    if grid.per_tensor:
        g = w.float().reshape(1, 1, -1)
    clip = torch.as_tensor(clip, dtype=torch.float32)
    absmax = g.abs().amax(-1)
    if grid.symmetric:
        scales, offsets = round_f16(absmax * clip / grid.half_range, 1), None
    else:  # the clipped range is [max(min, -r A), min(max, r A)], as AWQ clips
        lo = torch.maximum(g.amin(-1), -absmax * clip)
        hi = torch.minimum(g.amax(-1), absmax * clip)
        offsets = round_f16(lo, -1)
        # nearest is enough here: s >= (hi - m) / 15 * (1 - 2^-11) keeps hi within 15.5 steps of m,
        # and it gives back llama.cpp's own d when the weights already sit on a Q4_1 grid
        scales = ((hi - offsets.float()) / (grid.levels - 1)).half()
    if grid.per_tensor:
        shape = (w.shape[0], w.shape[1] // grid.group_size)
        scales = scales.expand(shape).contiguous()
        offsets = None if offsets is None else offsets.expand(shape).contiguous()
    return scales, offsets


def quantize_values(w: torch.Tensor, s: torch.Tensor, m: torch.Tensor | None, grid: UniformGrid) -> torch.Tensor:
    """Codes (int64, w's shape) of w on the grid with float16 scales s and offsets m already broadcast
    to w's shape (round to nearest, saturating). A zero scale (an all-zero group) gives the code of 0."""
    s = s.float()
    safe = torch.where(s == 0, torch.ones_like(s), s)
    if grid.bits == 8:
        return torch.round(w / safe).clamp(-128, 127).long()
    if m is None:
        return (torch.round(w / safe) + 8).clamp(0, 15).long()
    return torch.round((w - m.float()) / safe).clamp(0, 15).long()


def dequantize_values(q: torch.Tensor, s: torch.Tensor, m: torch.Tensor | None, grid: UniformGrid) -> torch.Tensor:
    """The float32 value of codes q, computed as `dequantize_ref` computes it (bit for bit)."""
    s = s.float()
    if grid.bits == 8:
        return s * q.float()
    if m is None:
        return s * (q - 8).float()
    return s * q.float() + m.float()


def expand_groups(t: torch.Tensor | None, group_size: int) -> torch.Tensor | None:
    """(out, groups) -> (out, groups * group_size): each group's value on each of its inputs."""
    return None if t is None else t.repeat_interleave(group_size, dim=1)


def encode(w: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None, grid: UniformGrid) -> torch.Tensor:
    """Codes (out, in) int64 of w (out, in) against fixed float16 scales/offsets (out, groups)."""
    out, n_in = w.shape
    wg = w.float().reshape(out, -1, grid.group_size)  # (out, groups, g): scales broadcast, no copies
    m = None if offsets is None else offsets[..., None]
    return quantize_values(wg, scales[..., None], m, grid).reshape(out, n_in)


def to_quantized_weight(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None,
                        grid: UniformGrid) -> QuantizedWeight:
    """Pack int64 codes (out, in) into the stored format (4-bit: two per byte, llama.cpp order)."""
    n_in = codes.shape[1]
    if grid.bits == 8:
        return QuantizedWeight("int8", codes.to(torch.int8).contiguous(), scales.contiguous(), grid.group_size, n_in)
    return QuantizedWeight("int4", pack_int4(codes.to(torch.uint8)), scales.contiguous(), grid.group_size, n_in,
                           offsets=None if offsets is None else offsets.contiguous())


def fake_quantize(w: torch.Tensor, grid: UniformGrid, clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Round-to-nearest w (out, in) onto the grid and back: the float32 weight RTN would store."""
    scales, offsets = choose_params(w, grid, clip)
    out, n_in = w.shape
    wg = w.float().reshape(out, -1, grid.group_size)
    s, m = scales[..., None], None if offsets is None else offsets[..., None]
    return dequantize_values(quantize_values(wg, s, m, grid), s, m, grid).reshape(out, n_in)


_round_f16 = round_f16  # the earlier private name, which compress/qat.py imports
