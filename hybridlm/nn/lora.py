"""Low-rank adaptation (Hu et al. 2021, eq. 3): h = W0 x + (alpha / r) B A x, W0 frozen.

`LoRALinear` wraps a linear layer (an `nn.Linear`, or a `QuantLinear` for QLoRA) and adds one
low-rank update per *slice* of its output rows. A slice exists because our attention fuses q, k and
v into one `wqkv` (rows [q heads; k heads; v heads]) and GLU MLPs fuse [gate; up] into `w_in`: an
adapter "on q" is an update of wqkv's first H*D rows only, which is exactly what PEFT's adapter on a
separate `q_proj` is. A = (r, in), B = (rows, r), as PEFT stores them; B starts at zero, so a fresh
adapter leaves the model unchanged.

Scaling is alpha / r, or alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023). `merge` adds
scaling * B A into the base weight (then the forward is the base alone) and `unmerge` takes it out
again; a quantized base cannot absorb a float update and refuses.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.nn import functional as F


class LoRALinear(nn.Module):
    """base(x) plus scaling * B_s A_s dropout(x) written into each slice s = rows [start, stop).

    slices: name -> (start, stop) output rows of `base`, non-overlapping. Parameters are
    lora_A[name] (r, in) and lora_B[name] (stop - start, r); the base's parameters are not touched.
    """

    def __init__(self, base: nn.Module, slices: dict[str, tuple[int, int]], r: int, alpha: float,
                 dropout: float = 0.0, rslora: bool = False):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, not {r}")
        self.base, self.r, self.alpha, self.rslora = base, r, alpha, rslora
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        self.slices = dict(sorted(slices.items(), key=lambda kv: kv[1][0]))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        device = next(iter([*base.parameters(), *base.buffers()])).device
        self.lora_A = nn.ParameterDict({n: nn.Parameter(torch.empty(r, base.in_features, device=device))
                                        for n in self.slices})
        self.lora_B = nn.ParameterDict({n: nn.Parameter(torch.zeros(stop - start, r, device=device))
                                        for n, (start, stop) in self.slices.items()})
        for a in self.lora_A.values():  # PEFT's init: A as nn.Linear's default, B zero
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.merged, self.enabled = False, True

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta(self) -> torch.Tensor:
        """The full update scaling * [B A per slice, zero elsewhere], float32 (out, in)."""
        d = torch.zeros(self.out_features, self.in_features, device=self.lora_A[next(iter(self.slices))].device)
        for name, (start, stop) in self.slices.items():
            d[start:stop] = self.scaling * (self.lora_B[name].float() @ self.lora_A[name].float())
        return d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged or not self.enabled:
            return y
        h = self.dropout(x)
        pieces, at = [], 0
        for name, (start, stop) in self.slices.items():  # rows without an adapter get zeros
            if start > at:
                pieces.append(y.new_zeros(*y.shape[:-1], start - at))
            a, b = self.lora_A[name], self.lora_B[name]
            pieces.append(F.linear(F.linear(h.to(a.dtype), a), b).to(y.dtype) * self.scaling)
            at = stop
        if at < self.out_features:
            pieces.append(y.new_zeros(*y.shape[:-1], self.out_features - at))
        return y + torch.cat(pieces, dim=-1)

    def _weight(self) -> torch.Tensor:
        if not isinstance(getattr(self.base, "weight", None), torch.Tensor):
            raise ValueError(f"a quantized base ({type(self.base).__name__}) cannot absorb a float LoRA update: "
                             "keep the adapter unmerged, or load the base in float to merge")
        return self.base.weight

    @torch.no_grad()
    def merge(self) -> None:
        """W0 += scaling * B A (in float64, then back to W0's dtype); the forward becomes the base's."""
        if not self.merged:
            w = self._weight()
            w.copy_((w.double() + self.delta().double().to(w.device)).to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 -= scaling * B A: the base weight back (to rounding) and the adapter applied on the side."""
        if self.merged:
            w = self._weight()
            w.copy_((w.double() - self.delta().double().to(w.device)).to(w.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        parts = ", ".join(f"{n}=rows[{a}:{b}]" for n, (a, b) in self.slices.items())
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}, {parts}, merged={self.merged}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear of `model` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Inside, every LoRALinear of `model` computes its base alone (DPO's reference model from the same
    weights). Merged adapters cannot be switched off this way and raise."""
    mods = list(lora_modules(model).values())
    if any(m.merged for m in mods):
        raise ValueError("adapters are merged into the base: unmerge them before disabling")
    for m in mods:
        m.enabled = False
    try:
        yield
    finally:
        for m in mods:
            m.enabled = True
