"""`quantize_model`: the one entry point (the CLI and the benchmarks call it).

It resolves the method's defaults, checks everything that can be checked before any weight is
touched (method, bits, symmetry, group sizes against every selected linear, calibration data, an
already quantized model), then lets the method rewrite the model in place: each selected
`nn.Linear` becomes a `QuantLinear`; the forward is untouched.

Which linears: every `nn.Linear` of the model except MoE routers (a few KB, and routing decisions
are discrete) and, unless `include_head`, the LM head (as GPTQ and AWQ leave it; with tied
embeddings the float head costs no extra bytes, since it is the embedding).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from math import gcd
from typing import Callable, Iterable

from torch import nn

from ..nn.quant import QuantLinear
from .calibration import Calibration
from .config import GRANULARITIES, CompressError, QuantizeConfig, group_size_for
from .registry import Method, get_method


@dataclass
class QuantizeSummary:
    """What `quantize_model` did: the resolved config, the linears it replaced and their bytes."""

    config: QuantizeConfig
    linears: list[str]
    quantized_bytes: int  # bytes the QuantLinears hold (codes, scales, offsets, tables, biases)
    float32_bytes: int  # the same linears' weights and biases in float32
    seconds: float
    calibration_tokens: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.quantized_bytes / max(self.float32_bytes, 1)


def resolve_config(cfg: QuantizeConfig) -> tuple[QuantizeConfig, Method]:
    """Fill the method's defaults into `cfg` and check the combination exists."""
    method = get_method(cfg.method)
    bits = method.bits[0] if cfg.bits is None else cfg.bits
    if bits not in method.bits:
        raise CompressError(f"{cfg.method} quantizes to {' or '.join(map(str, method.bits))} bits, not {bits}")
    group = method.group_size[bits] if cfg.group_size is None else cfg.group_size
    if not isinstance(group, int) and group not in GRANULARITIES:
        raise CompressError(f"group size must be an integer, 'channel' or 'tensor', not {group!r}")
    if isinstance(group, int) and group <= 0:
        raise CompressError(f"group size must be positive, not {group}")
    symmetric = cfg.symmetric
    if method.uniform:
        symmetric = (bits == 8) if symmetric is None else symmetric
        if bits == 8 and not symmetric:
            raise CompressError("int8 is symmetric only (the int8 format stores no offsets); drop --asymmetric or use --bits 4")
    elif symmetric is not None:
        raise CompressError(f"--symmetric/--asymmetric apply to uniform grids (rtn, gptq, awq), not {cfg.method}")
    if cfg.act_order and cfg.method != "gptq":
        raise CompressError("--act-order is a GPTQ option")
    if group == "tensor" and not method.uniform:
        raise CompressError(f"per-tensor scales are for uniform grids (rtn, gptq, awq), not {cfg.method}")
    if not 0 <= cfg.damp < 1:
        raise CompressError(f"--damp is a fraction of the mean Hessian diagonal in [0, 1), not {cfg.damp}")
    if cfg.fp8_format not in ("e4m3", "e5m2"):
        raise CompressError(f"FP8 format must be e4m3 or e5m2, not {cfg.fp8_format!r}")
    if cfg.kmeans_per not in ("row", "tensor"):
        raise CompressError(f"k-means tables are per 'row' or per 'tensor', not {cfg.kmeans_per!r}")
    return cfg.replace(bits=bits, group_size=group, symmetric=symmetric), method


def select_targets(model: nn.Module, cfg: QuantizeConfig) -> dict[str, nn.Linear]:
    """The linears `cfg` quantizes, by qualified name (see the module doc). Errors if the model
    already holds a QuantLinear."""
    targets = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            raise CompressError(f"the model is already quantized ({name} is a QuantLinear); "
                                "quantize the float model instead")
        if type(module) is not nn.Linear or name.endswith("router"):
            continue
        if name == "lm_head" and not cfg.include_head:
            continue
        targets[name] = module
    if not targets:
        raise CompressError("the model has no nn.Linear layers to quantize")
    return targets


def check_group_sizes(targets: dict[str, nn.Linear], cfg: QuantizeConfig) -> None:
    """Every target's inputs split into whole groups, of a multiple of 32 for 4-bit codes."""
    four_bit = cfg.bits == 4
    if cfg.method == "kmeans" and cfg.kmeans_per == "row":
        return  # a table per row: the group is the row
    for name, linear in targets.items():
        g = group_size_for(cfg, linear.in_features)
        if linear.in_features % g or (four_bit and g % 32):
            widths = sorted({lin.in_features for lin in targets.values()})
            common = 0
            for w in widths:
                common = gcd(common, w)
            step = 32 if four_bit else 1
            valid = [d for d in range(step, common + 1, step) if common % d == 0]
            why = "is not a multiple of 32 (4-bit codes pack in runs of 32)" if four_bit and g % 32 \
                else f"does not divide the {linear.in_features} inputs of {name}"
            raise CompressError(f"group size {g} {why}; sizes that fit every layer: "
                                f"{', '.join(map(str, valid)) or 'none'}, channel, tensor")


def plan(model: nn.Module, cfg: QuantizeConfig) -> tuple[QuantizeConfig, Method, dict[str, nn.Linear]]:
    """Every check that needs no calibration data: (resolved config, method, target linears)."""
    cfg, method = resolve_config(cfg)
    targets = select_targets(model, cfg)
    check_group_sizes(targets, cfg)
    return cfg, method, targets


def quantize_model(model: nn.Module, cfg: QuantizeConfig, calib: Calibration | None = None,
                   progress: Callable[[Iterable], Iterable] | None = None) -> QuantizeSummary:
    """Quantize `model`'s linears in place as `cfg` says. calib: token sequences for calibrated
    methods (required by gptq and awq; used by kmeans when given). progress: wraps the iteration
    over blocks or layers (e.g. a tqdm factory). Returns what was done."""
    start = time.perf_counter()
    cfg, method, targets = plan(model, cfg)
    if method.calibration == "required" and calib is None:
        raise CompressError(f"{cfg.method} needs calibration data")
    if method.calibration == "none":
        calib = None
    float_bytes = sum(4 * (lin.weight.numel() + (0 if lin.bias is None else lin.bias.numel()))
                      for lin in targets.values())
    was_training = model.training
    model.eval()
    method.apply(model, targets, cfg, calib, progress or iter)
    model.train(was_training)
    names = list(targets)
    qbytes = sum(quantized_linear_bytes(model.get_submodule(n)) for n in names)
    return QuantizeSummary(cfg, names, qbytes, float_bytes, time.perf_counter() - start,
                           0 if calib is None else calib.n_tokens)


def quantized_linear_bytes(module: nn.Module) -> int:
    """Bytes a QuantLinear stores: codes, scales, offsets, table and bias (not any run-time
    repacking a fast path may add)."""
    bias = 0 if module.bias is None else module.bias.numel() * module.bias.element_size()
    return module.weight_q.nbytes() + bias
