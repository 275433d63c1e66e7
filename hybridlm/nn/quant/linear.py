"""`QuantLinear`: a linear layer whose weight is stored quantized (formats.py) and the swap that
puts it in place of an `nn.Linear`. The forward is the only thing that changes: the model around
it is untouched, as compression rewrites modules and leaves the forward alone.

The reference forward dequantizes the whole weight and calls `F.linear`: obviously right, and the
twin every native kernel is pinned to.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .formats import QuantizedWeight


class QuantLinear(nn.Module):
    """y = x W^T + b with W held as a `QuantizedWeight` (codes, scales, offsets, lut as buffers)."""

    def __init__(self, weight: QuantizedWeight, bias: torch.Tensor | None = None):
        super().__init__()
        self.fmt, self.group_size = weight.fmt, weight.group_size
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.register_buffer("codes", weight.codes)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("offsets", weight.offsets)
        self.register_buffer("lut", weight.lut)
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    @property
    def weight_q(self) -> QuantizedWeight:
        """The stored weight as a QuantizedWeight (views of the buffers, not copies)."""
        return QuantizedWeight(self.fmt, self.codes, self.scales, self.group_size, self.in_features,
                               self.offsets, self.lut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quant_linear_ref(x, self.weight_q, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")


def quant_linear_ref(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """Dequantize, then F.linear, in x's dtype. x (..., in) -> (..., out)."""
    w = weight.dequantize(x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def quantize_linears(model: nn.Module, quantize: Callable[[str, nn.Linear], QuantizedWeight | None]) -> int:
    """Replace, in place, each `nn.Linear` for which `quantize(qualified name, linear)` returns a
    QuantizedWeight by a QuantLinear holding it (None keeps the layer). A weight shared by two
    modules (tied embeddings and LM head) is quantized only in the linear. Returns how many swapped."""
    count = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            full = f"{parent_name}.{name}" if parent_name else name
            q = quantize(full, child)
            if q is not None:
                setattr(parent, name, QuantLinear(q, child.bias))
                count += 1
    return count
