"""A linear layer for CPU inference whose weight lives in oneDNN's own layout.

Why: at batch 1 a float32 `nn.Linear` on this class of CPU streams its weight at ~16 GB/s and
leaves the second core idle; the same matmul through oneDNN with a pre-reordered weight streams
at ~35 GB/s and is ~1.8x faster for 512-token prefill too (measured by `bench/linear.py`). The
reference twin is `nn.Linear` itself: `pack_linears` swaps modules in place and tests pin the
logits of the packed model to the unpacked one.

A packed model is for inference only: no gradients, CPU only, and its state_dict does not hold
the packed weights (save the model before packing).

Which is faster depends on the CPU, not on a constant: on an AMD Zen 3 (2 cores) packed decodes
~1.9x faster than nn.Linear, on an Intel Ice Lake (2 cores, AVX-512) it decodes ~35% slower. So
"auto" measures: `choose_linear_impl` times both on the model's own layers (one of each shape, one
row of input as in decoding, the candidates alternating for a few rounds; a few ms) and keeps the
faster.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

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


@dataclass
class LinearChoice:
    impl: str  # "packed" or "ref"
    seconds: dict[str, float]  # median seconds of one pass over the timed layers, per candidate
    reason: str  # how it was decided, for logs


def choose_fastest(candidates: dict[str, Callable[[], object]], rounds: int = 7) -> dict[str, float]:
    """Median seconds of each candidate call, timed in turns (round 1 of each, then round 2...) so
    a busy machine's noise falls on all of them alike. One untimed warm-up call each."""
    for run in candidates.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _float_cpu_linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if type(m) is nn.Linear and m.weight.device.type == "cpu"
            and m.weight.dtype == torch.float32]


def choose_linear_impl(model: nn.Module, impl: str = "auto", rounds: int = 7) -> LinearChoice:
    """Resolve `impl` for `model`: "ref" and "packed" as asked (packed checked possible), "auto" by
    timing both on one layer of each distinct shape with a one-row input (decoding's shape)."""
    if impl not in LINEAR_IMPLS:
        raise ValueError(f"linear impl must be one of {LINEAR_IMPLS}, not {impl!r}")
    linears = _float_cpu_linears(model)
    possible = packed_linear_available() and bool(linears)
    if impl == "packed" and not (possible and len(linears) == sum(type(m) is nn.Linear for m in model.modules())):
        raise ValueError("packed linears need oneDNN and a float32 model on the CPU")
    if impl != "auto" or not possible:
        reason = "asked for" if impl != "auto" else "no float32 CPU linears to pack"
        return LinearChoice("ref" if impl == "auto" else impl, {}, reason)
    shapes: dict[tuple[int, int], nn.Linear] = {}
    for m in linears:
        shapes.setdefault((m.in_features, m.out_features), m)
    layers = list(shapes.values())
    packed = [PackedLinear(m) for m in layers]
    xs = [torch.randn(1, m.in_features) for m in layers]

    def run(mods):
        with torch.inference_mode():
            for mod, x in zip(mods, xs):
                mod(x)

    seconds = choose_fastest({"packed": lambda: run(packed), "ref": lambda: run(layers)}, rounds)
    best = min(seconds, key=seconds.get)
    detail = ", ".join(f"{name} {t * 1e3:.2f} ms" for name, t in seconds.items())
    return LinearChoice(best, seconds, f"measured on {len(layers)} layer shapes, one row: {detail}")


def pack_linears(model: nn.Module, impl: str | LinearChoice = "auto") -> int:
    """Replace every nn.Linear in `model` by a PackedLinear, in place. Returns how many were packed.

    impl: "ref" keeps nn.Linear; "packed" requires oneDNN and float32 CPU weights (error if not);
    "auto" packs when that is possible and measured faster here (`choose_linear_impl`); or the
    LinearChoice that call returned.
    """
    choice = impl if isinstance(impl, LinearChoice) else choose_linear_impl(model, impl)
    if choice.impl == "ref":
        return 0
    targets = {id(m) for m in _float_cpu_linears(model)}
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in targets:
                setattr(parent, name, PackedLinear(child))
                count += 1
    model.eval().requires_grad_(False)
    return count
