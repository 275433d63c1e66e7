"""A linear layer for CPU inference whose weight lives in oneDNN's own layout.

Why: at batch 1 a float32 `nn.Linear` on this class of CPU streams its weight at ~16 GB/s and
leaves the second core idle; the same matmul through oneDNN with a pre-reordered weight streams
at ~35 GB/s and is ~1.8x faster for 512-token prefill too (measured by `bench/linear.py`). The
reference twin is `nn.Linear` itself: `pack_linears` swaps modules in place and tests pin the
logits of the packed model to the unpacked one.

A packed model is for inference only: no gradients, CPU only, and its state_dict does not hold
the packed weights (save the model before packing).
"""

from __future__ import annotations

import torch
from torch import nn

LINEAR_IMPLS = ("auto", "packed", "ref")


def packed_linear_available() -> bool:
    return torch.backends.mkldnn.is_available()


class PackedLinear(nn.Module):
    """y = x W^T + b with W reordered once for oneDNN. Built from an existing nn.Linear."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.weight.device.type != "cpu" or linear.weight.dtype != torch.float32:
            raise ValueError("PackedLinear packs float32 CPU weights only")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # a plain attribute, not a buffer: oneDNN tensors cannot be serialised or moved
        self.weight_packed = linear.weight.detach().to_mkldnn()
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight_packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linears(model: nn.Module, impl: str = "auto") -> int:
    """Replace every nn.Linear in `model` by a PackedLinear, in place. Returns how many were packed.

    impl: "ref" keeps nn.Linear; "packed" requires oneDNN and float32 CPU weights (error if not);
    "auto" packs when that is possible and keeps nn.Linear otherwise.
    """
    if impl not in LINEAR_IMPLS:
        raise ValueError(f"linear impl must be one of {LINEAR_IMPLS}, not {impl!r}")
    if impl == "ref":
        return 0
    param = next(model.parameters())
    possible = packed_linear_available() and param.device.type == "cpu" and param.dtype == torch.float32
    if not possible:
        if impl == "packed":
            raise ValueError("packed linears need oneDNN and a float32 model on the CPU")
        return 0
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear(child))
                count += 1
    model.eval().requires_grad_(False)
    return count
