"""The quantization methods `quantize_model` and `hybridlm quantize` know, by name.

Adding a method is one function and one line in METHODS:

- a per-linear method writes `fn(name, weight (out, in), cfg, stats=None) -> QuantizedWeight` and
  registers `per_linear(fn)`; with calibration, `stats` is the linear's `InputStats` (sequential.py)
  collected with the earlier layers already quantized;
- a method that needs whole-model control (folding scales into neighbours, other module types)
  writes `apply(model, targets, cfg, calib, progress)` and mutates the model itself; targets are the
  selected `nn.Linear`s by qualified name, and sequential.py has the block-by-block driver.

Everything else (which linears, the group-size and bits checks, an already quantized model,
calibration present when required) is checked once in api.py before any method runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from torch import nn

from ..nn.quant import QuantLinear, QuantizedWeight
from .calibration import Calibration
from .config import CompressError, QuantizeConfig
from .sequential import quantize_sequentially, replace_module

Progress = Callable[[Iterable], Iterable]
Apply = Callable[[nn.Module, dict, QuantizeConfig, "Calibration | None", Progress], None]


@dataclass(frozen=True)
class Method:
    """apply: mutates the model. bits: allowed widths (the first is the default). group_size: the
    default per bits ({bits: size or "channel"}). calibration: "none", "optional" (used when given)
    or "required". uniform: takes --symmetric/--asymmetric."""

    apply: Apply
    bits: tuple[int, ...]
    group_size: dict[int, int | str]
    calibration: str
    summary: str
    uniform: bool = False


def per_linear(fn: Callable[..., QuantizedWeight]) -> Apply:
    """A whole-model method from a per-linear function (see the module doc)."""

    def apply(model, targets, cfg, calib, progress=iter):
        def make(name, linear, stats=None):
            return QuantLinear(fn(name, linear.weight.detach().float(), cfg, stats), linear.bias)

        if calib is None:
            for name, linear in progress(list(targets.items())):
                replace_module(model, name, make(name, linear))
        else:
            quantize_sequentially(model, targets, calib, make, gram=False, progress=progress)

    return apply


def per_linear_with_inputs(fn: Callable[..., QuantizedWeight]) -> Apply:
    """Like per_linear, for `fn(name, linear, cfg, stats)` that needs X^T X (GPTQ's Hessian)."""

    def apply(model, targets, cfg, calib, progress=iter):
        def make(name, linear, stats):
            return QuantLinear(fn(name, linear, cfg, stats), linear.bias)

        quantize_sequentially(model, targets, calib, make, gram=True, progress=progress)

    return apply


def _methods() -> dict[str, Method]:
    from .awq import awq_apply
    from .fp8 import fp4_linear, fp8_linear
    from .gptq import gptq_linear
    from .lut import kmeans_linear, nf4_linear
    from .rtn import rtn_linear
    from .smoothquant import naive_w8a8_apply, smoothquant_apply

    uniform_groups = {4: 64, 8: "channel"}
    return {
        "rtn": Method(per_linear(rtn_linear), (4, 8), uniform_groups, "none",
                      "round to nearest on a uniform int grid", uniform=True),
        "gptq": Method(per_linear_with_inputs(gptq_linear), (4, 8), uniform_groups, "required",
                       "GPTQ: Hessian-weighted error feedback, column by column", uniform=True),
        "awq": Method(awq_apply, (4, 8), uniform_groups, "required",
                      "AWQ: activation-aware input scales folded into the previous op, then clipping", uniform=True),
        "nf4": Method(per_linear(nf4_linear), (4,), {4: 64}, "none", "NF4 table, absmax per group (QLoRA)"),
        "kmeans": Method(per_linear(kmeans_linear), (4,), {4: "channel"}, "optional",
                         "4-bit k-means lookup table per row (or per tensor)"),
        "fp8": Method(per_linear(fp8_linear), (8,), {8: "channel"}, "none", "FP8 e4m3/e5m2 values, emulated"),
        "fp4": Method(per_linear(fp4_linear), (4,), {4: 32}, "none", "FP4 e2m1 values with a scale per 32, emulated"),
        # W8A8: int8 activations too (options: alpha, act = "dynamic" per token | "static" per tensor)
        "smoothquant": Method(smoothquant_apply, (8,), {8: "channel"}, "required",
                              "SmoothQuant W8A8: activation outliers migrated into the weights, int8 x int8 matmuls"),
        "w8a8": Method(naive_w8a8_apply, (8,), {8: "channel"}, "optional",
                       "naive W8A8 (no smoothing): the SmoothQuant baseline; static scales need calibration"),
    }


_CACHE: dict[str, Method] = {}


def methods() -> dict[str, Method]:
    """name -> Method (built on first use: importing this module imports no method)."""
    if not _CACHE:
        _CACHE.update(_methods())
    return _CACHE


def get_method(name: str) -> Method:
    table = methods()
    if name not in table:
        raise CompressError(f"unknown quantization method {name!r}; known: {', '.join(table)}")
    return table[name]
