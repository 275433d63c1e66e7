"""Quantization-aware training: train through the rounding, then store exactly what was trained.

`prepare_qat(model, spec)` swaps each linear (as `quantize_model` selects them: not the LM head,
not MoE routers) for a `FakeQuantLinear` that keeps its float weight W (the latent weights the
optimizer updates) and computes with Q(W), W rounded onto the spec's grid and back. Rounding has
zero gradient almost everywhere, so the backward pass uses the straight-through estimator
(Bengio et al. 2013; as in Jacob et al. 2018): the forward uses Q(W), the backward takes
dL/dW := dL/dQ(W) (`straight_through`).

The grid's scales follow W (absmax per group, recomputed every step, no gradient through them),
and no weight ever falls outside its group's range, so no gradient is clipped. Optionally the
input is fake-quantized too (int8 per token, the same STE), which `convert_qat` turns into a
W8A8Linear (only with int8 per-channel weights: no module runs int4 weights on int8 activations).

`convert_qat(model)` replaces every FakeQuantLinear by a QuantLinear holding the codes and float16
scales of Q(W): its forward computes with exactly the weight the fake-quant forward used, so the
converted model's logits equal the trained model's (tests/compress/test_qat.py).

The grid is RTN's (grid.py chooses the scales, for any width: symmetric s = absmax / (2^(b-1) - 1/2),
asymmetric [m, m + (2^b - 1) s], in float16), for 2..8 bits: 2- and 3-bit codes are stored in the
int4 format using 4 or 8 of its 16 levels (int4 code = q + 8, or q asymmetric), 5..7-bit ones in
int8. At 4 and 8 bits the codes are those `hybridlm quantize --method rtn` gives (tested), so QAT
then RTN of the trained weights is the same model as the conversion.

Spec strings (TrainConfig.qat, `hybridlm train --qat`): int{2,3,4,5,6,7,8}[-g<N>|-channel][-asym][-a8],
e.g. "int4-g32" (the default group for <= 4 bits is 32, for int8 one scale per row), "int3-g64-asym",
"int8-a8" (W8A8, also spelled "w8a8").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..nn.quant import QuantizedWeight, QuantLinear, pack_int4
from ..nn.quant.w8a8 import W8A8Linear, quantize_per_token
from .config import CompressError
from .grid import choose_params

_SPEC = re.compile(r"^int([2-8])(?:-(g\d+|channel))?(-asym)?(-a8)?$")


@dataclass(frozen=True)
class QATSpec:
    """bits 2..8; group_size inputs per scale (None: one per output row); asymmetric grid (<= 4
    bits); act8: int8 per-token activations too (int8 per-channel weights only)."""

    bits: int = 4
    group_size: int | None = 32
    asymmetric: bool = False
    act8: bool = False

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise CompressError(f"QAT weights have 2 to 8 bits, not {self.bits}")
        if self.asymmetric and self.bits > 4:
            raise CompressError("asymmetric QAT grids are for <= 4 bits (the int8 format stores no offsets)")
        if self.group_size is not None and (self.group_size <= 0 or (self.bits <= 4 and self.group_size % 32)):
            need = " and a multiple of 32 for <= 4 bits" if self.bits <= 4 else ""
            raise CompressError(f"QAT group size must be positive{need}, not {self.group_size}")
        if self.act8 and (self.bits != 8 or self.group_size is not None):
            raise CompressError("int8 activations (-a8) need int8 weights with one scale per row (int8-a8)")

    @classmethod
    def parse(cls, text: str) -> "QATSpec":
        """'int4-g32', 'int3-g64-asym', 'int8', 'int8-a8' / 'w8a8' (see the module doc)."""
        text = text.strip().lower()
        m = _SPEC.match("int8-a8" if text == "w8a8" else text)
        if not m:
            raise CompressError(f"QAT spec {text!r} is not int<bits>[-g<N>|-channel][-asym][-a8] "
                                "(e.g. int4-g32, int3-g64-asym, int8, int8-a8)")
        bits, group, asym, act8 = int(m.group(1)), m.group(2), bool(m.group(3)), bool(m.group(4))
        if group is None:
            size = 32 if bits <= 4 else None
        else:
            size = None if group == "channel" else int(group[1:])
        return cls(bits, size, asym, act8)

    def __str__(self) -> str:
        group = "-channel" if self.group_size is None else f"-g{self.group_size}"
        return f"int{self.bits}{group}{'-asym' if self.asymmetric else ''}{'-a8' if self.act8 else ''}"

    def group_for(self, in_features: int) -> int:
        return in_features if self.group_size is None else self.group_size


# -- the grid, for any width ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Grid:
    """What grid.choose_params reads of a UniformGrid, for any width (UniformGrid stops at 4 and 8)."""

    bits: int
    symmetric: bool
    group_size: int
    per_tensor: bool = False

    @property
    def levels(self) -> int:
        return 2 ** self.bits

    @property
    def half_range(self) -> float:
        return self.levels / 2 - 0.5


def grid_params(w: torch.Tensor, spec: QATSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float16 scales (and offsets if asymmetric) (out, in // g) of w (out, in): grid.py's own
    choice (`choose_params`), so 4- and 8-bit QAT shares RTN's scales whatever rule RTN uses."""
    return choose_params(w.detach().float(), _Grid(spec.bits, not spec.asymmetric, spec.group_for(w.shape[1])))


def grid_codes(w: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None, spec: QATSpec) -> torch.Tensor:
    """Integer levels (out, in) int64: signed q in [-2^(b-1), 2^(b-1) - 1], or q in [0, 2^b - 1]
    asymmetric. A zero scale (an all-zero group) gives the level of 0."""
    gs = spec.group_for(w.shape[1])
    s = scales.float().repeat_interleave(gs, dim=1)
    safe = torch.where(s == 0, torch.ones_like(s), s)
    if offsets is None:
        half = 2 ** (spec.bits - 1)
        return torch.round(w.float() / safe).clamp(-half, half - 1).long()
    m = offsets.float().repeat_interleave(gs, dim=1)
    return torch.round((w.float() - m) / safe).clamp(0, 2 ** spec.bits - 1).long()


def grid_values(q: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None, spec: QATSpec) -> torch.Tensor:
    """float32 values of levels q, computed as formats.dequantize_ref computes the stored codes."""
    gs = spec.group_for(q.shape[1])
    s = scales.float().repeat_interleave(gs, dim=1)
    if offsets is None:
        return s * q.float()
    return s * q.float() + offsets.float().repeat_interleave(gs, dim=1)


def fake_quantize_weight(w: torch.Tensor, spec: QATSpec) -> torch.Tensor:
    """Q(W): w (out, in) onto the grid and back, float32, no gradient."""
    with torch.no_grad():
        scales, offsets = grid_params(w, spec)
        return grid_values(grid_codes(w, scales, offsets, spec), scales, offsets, spec)


def quantized_weight(w: torch.Tensor, spec: QATSpec) -> QuantizedWeight:
    """The stored form of Q(W): int4 codes (two per byte) for <= 4 bits, int8 above."""
    w = w.detach().float()
    scales, offsets = grid_params(w, spec)
    q = grid_codes(w, scales, offsets, spec)
    g = spec.group_for(w.shape[1])
    if spec.bits > 4:
        return QuantizedWeight("int8", q.to(torch.int8).contiguous(), scales.contiguous(), g, w.shape[1])
    codes = q if offsets is not None else q + 8  # signed levels sit around int4's zero code, 8
    return QuantizedWeight("int4", pack_int4(codes.to(torch.uint8)), scales.contiguous(), g, w.shape[1],
                           offsets=None if offsets is None else offsets.contiguous())


# -- the modules ------------------------------------------------------------------------------------

class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_q):
        return x_q

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through(x: torch.Tensor, x_q: torch.Tensor) -> torch.Tensor:
    """x_q in the forward (exactly its values: `x + (x_q - x).detach()` can be an ulp off, and the
    converted model must compute with the very same weight), identity gradient to x in the backward."""
    return _StraightThrough.apply(x, x_q.to(x.dtype))


class FakeQuantLinear(nn.Linear):
    """An nn.Linear computing with its weight fake-quantized (and its input, with act8). Same
    parameters under the same names, so state dicts, optimizers and checkpoints are unchanged."""

    def __init__(self, in_features: int, out_features: int, bias: bool, spec: QATSpec, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.spec = spec

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QATSpec) -> "FakeQuantLinear":
        """Wraps the same Parameter objects (no copy)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features, new.spec = linear.in_features, linear.out_features, spec
        new.weight, new.bias = linear.weight, linear.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = straight_through(self.weight, fake_quantize_weight(self.weight, self.spec))
        if self.spec.act8:
            q, s = quantize_per_token(x.detach())
            x = straight_through(x, q.float() * s)
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", qat={self.spec}"


def _selected(model: nn.Module, include_head: bool):
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if full.endswith("router") or (full == "lm_head" and not include_head):
                continue
            yield parent, name, full, child


def prepare_qat(model: nn.Module, spec: QATSpec, include_head: bool = False) -> int:
    """Swap, in place, the linears `quantize_model` would quantize for FakeQuantLinears (sharing
    their parameters). Checks every group size first; returns how many were swapped."""
    chosen = [(p, n, full, c) for p, n, full, c in _selected(model, include_head) if type(c) is nn.Linear]
    if not chosen:
        raise CompressError("the model has no nn.Linear layers to train quantization-aware")
    for _, _, full, child in chosen:
        g = spec.group_for(child.in_features)
        if child.in_features % g:
            raise CompressError(f"QAT group size {g} does not divide the {child.in_features} inputs of {full}")
    for parent, name, _, child in chosen:
        setattr(parent, name, FakeQuantLinear.from_linear(child, spec))
    return len(chosen)


def convert_qat(model: nn.Module) -> int:
    """Replace, in place, every FakeQuantLinear by the QuantLinear (W8A8Linear with act8) storing
    exactly its fake-quantized weight. Returns how many."""
    count = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, FakeQuantLinear):
                continue
            q = quantized_weight(child.weight, child.spec)
            bias = None if child.bias is None else child.bias.detach()
            new = W8A8Linear(q, bias, act="dynamic", impl="ref") if child.spec.act8 else QuantLinear(q, bias)
            setattr(parent, name, new)
            count += 1
    return count


def qat_summary(spec: QATSpec) -> dict:
    """What a converted QAT model records as its quantization (checkpoints/quantized.py's JSON)."""
    return {"method": "qat", "qat": str(spec), "bits": spec.bits, "group_size": spec.group_size or "channel",
            "symmetric": not spec.asymmetric, "act_bits": 8 if spec.act8 else None}
