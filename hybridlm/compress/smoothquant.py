"""SmoothQuant (Xiao et al. 2022, arXiv:2211.10438): W8A8 with activation outliers moved into weights.

LLM activations have a few input channels hundreds of times larger than the rest; one int8 scale
per token then spends its range on them and rounds every other channel to a handful of levels.
Weights have no such outliers. SmoothQuant divides channel j of the input by s_j and multiplies
column j of the weight by s_j (exact: y = (x / s) (W diag(s))^T), with (paper eq. 4)

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

so both sides end up with comparable ranges (alpha = 0.5 splits the difficulty evenly; more
alpha moves more of it into the weights). max|X_j| comes from calibration (forward pre-hooks);
max|W_j| is over every linear reading that input. Then weights are int8 per output channel and
activations int8 per token (dynamic) or per tensor (static, from the calibrated max |x / s|),
run by nn/quant/w8a8.py's W8A8Linear.

Where x / s is free, as in AWQ (awq.py's `scale_groups`, shared): wqkv, w_in and Mamba's
in_proj fold 1/s into the block's pre-norm weight; wo into the v rows of wqkv (with GQA, s is
tied over the query heads that read one v head: their maxima are pooled); the w_out of a GLU
MLP into the up rows of w_in; Mamba's out_proj into its gated norm. Folding into rows costs the
producer nothing, since its int8 scales are per output row. The paper's Llama recipe smooths only
the two norm-fed groups; wo and w_out see some of the largest outliers of a Llama (the "massive
activations" of the down projection), so they are smoothed here too. Layers with no producer that
can absorb 1/s (a non-GLU w_out behind its activation, MoE experts and the LM head, post-norm
blocks) keep an explicit per-channel `input_scale` in the W8A8Linear: one multiply per input,
fused with the quantization that reads x anyway.

Block by block (sequential.py's driver): each block's maxima are collected with the earlier
blocks already quantized, so static scales see the inputs the quantized model will really give.
`smooth=False` is naive W8A8 (the same pipeline with s = 1): the baseline the paper beats.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ..nn.quant import QuantizedWeight
from ..nn.quant.w8a8 import ACT_MODES, QMAX, W8A8Linear, set_w8a8_impl
from .awq import scale_groups
from .calibration import Calibration
from .config import CompressError, QuantizeConfig
from .grid import UniformGrid
from .rtn import rtn_quantize
from .sequential import block_targets, capture_block_inputs, replace_module, run_block

DEFAULT_ALPHA = 0.5
S_MIN = 1e-5  # as the reference implementation clamps s: a dead channel must not divide by ~0


class InputMax:
    """Running max |x| per input channel of one linear (in,) float32, and the tokens seen."""

    def __init__(self, in_features: int):
        self.amax = torch.zeros(in_features)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        if x.shape[0]:
            self.amax = torch.maximum(self.amax, x.abs().amax(0).float().cpu())
        self.count += x.shape[0]


def collect_maxima(linears: dict[str, nn.Module], run: Callable[[], object]) -> dict[str, InputMax]:
    """Per-channel input maxima of `linears` (name -> module) over whatever `run()` forwards."""
    stats = {name: InputMax(lin.in_features) for name, lin in linears.items()}
    by_module = {lin: stats[name] for name, lin in linears.items()}
    handles = [lin.register_forward_pre_hook(lambda m, args: by_module[m].add(args[0])) for lin in by_module]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return stats


def smoothing_scale(act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (paper eq. 4), (in,) float32. A channel never
    active, or with an all-zero column, keeps s = 1."""
    act_max, weight_max = act_max.float(), weight_max.float()
    s = act_max.clamp(min=1e-12).pow(alpha) / weight_max.clamp(min=1e-12).pow(1 - alpha)
    s = s.clamp(min=S_MIN)
    return torch.where((act_max > 0) & (weight_max > 0), s, torch.ones_like(s))


def _tied(t: torch.Tensor, tie: tuple[int, int, int] | None) -> torch.Tensor:
    """Max over the query heads of each GQA group, repeated back: (in,) -> (in,)."""
    if tie is None:
        return t
    kv, rep, d = tie
    return t.view(kv, rep, d).amax(1, keepdim=True).expand(kv, rep, d).reshape(-1)


def w8a8_linear(weight: torch.Tensor, bias: torch.Tensor | None, act: str, act_max: torch.Tensor | None,
                s: torch.Tensor | None, explicit: bool) -> W8A8Linear:
    """The W8A8Linear for a float weight (out, in) whose input will be divided by s (None: 1).

    act_max: the calibrated per-channel max |x| before smoothing (needed for static scales).
    explicit: the layer divides its own input (input_scale = 1 / s) instead of a folded producer."""
    w = weight.detach().float()
    if s is not None:
        w = w * s  # a new tensor: a tied LM head must not rescale the embedding it shares
    q: QuantizedWeight = rtn_quantize(w, UniformGrid(8, True, w.shape[1]))
    act_scale = None
    if act == "static":
        smoothed = act_max if s is None else act_max / s
        act_scale = (smoothed.max() / QMAX).clamp(min=1e-12)
    input_scale = (1.0 / s) if explicit and s is not None else None
    # "ref" while calibrating (the float twin is ~20x faster than torch._int_mm on x86 for many
    # tokens; same codes): `smoothquant_apply` switches the finished model to the int8 path
    return W8A8Linear(q, bias, act=act, act_scale=act_scale, input_scale=input_scale, impl="ref")


def resolve_options(cfg: QuantizeConfig, smooth: bool) -> tuple[float, str]:
    """(alpha, act) from cfg.options, checked."""
    extra = set(cfg.options) - {"alpha", "act"}
    if extra:
        raise CompressError(f"unknown SmoothQuant option(s) {sorted(extra)}; known: alpha, act")
    alpha = float(cfg.options.get("alpha", DEFAULT_ALPHA))
    act = cfg.options.get("act", "dynamic")
    if smooth and not 0 <= alpha <= 1:
        raise CompressError(f"SmoothQuant alpha must be in [0, 1], not {alpha}")
    if act not in ACT_MODES:
        raise CompressError(f"activation scales must be 'dynamic' (per token) or 'static' (calibrated per "
                            f"tensor), not {act!r}")
    if cfg.group_size != "channel":
        raise CompressError(f"W8A8 weights have one scale per output channel (--group-size channel), "
                            f"not {cfg.group_size}")
    return alpha, act


def fold_smoothing(block: nn.Module, prefix: str, inner: dict[str, nn.Linear], maxima: dict[str, InputMax],
                   alpha: float) -> dict[str, torch.Tensor]:
    """Fold 1/s into the producers that can take it; returns name -> s for the linears smoothed so.
    Consumers later in the block go first: folding into rows (v of wqkv, up of w_in) changes that
    linear's column maxima, which its own s is computed from next."""
    folded: dict[str, torch.Tensor] = {}
    for group in reversed(scale_groups(block, prefix)):
        names = group.linears
        if group.fold is None or not all(n in inner for n in names) or maxima[names[0]].count == 0:
            continue
        w_max = torch.stack([inner[n].weight.detach().abs().amax(0).float() for n in names]).amax(0)
        s = smoothing_scale(_tied(maxima[names[0]].amax, group.tie), _tied(w_max, group.tie), alpha)
        with torch.no_grad():
            group.fold(s)
        for n in names:
            folded[n] = s
    return folded


def _quantize_block(model: nn.Module, inner: dict[str, nn.Linear], maxima: dict[str, InputMax],
                    folded: dict[str, torch.Tensor], alpha: float, act: str, smooth: bool) -> None:
    for name, linear in inner.items():
        st = maxima[name]
        s, explicit = folded.get(name), False
        if smooth and s is None and st.count:
            s, explicit = smoothing_scale(st.amax, linear.weight.detach().abs().amax(0), alpha), True
        layer_act = act if st.count else "dynamic"  # never reached by calibration: no static scale to give it
        replace_module(model, name, w8a8_linear(linear.weight, linear.bias, layer_act, st.amax, s, explicit))


def smoothquant_apply(model: nn.Module, targets: dict[str, nn.Linear], cfg: QuantizeConfig,
                      calib: Calibration | None, progress: Callable[[Iterable], Iterable] = iter,
                      smooth: bool = True) -> None:
    """SmoothQuant W8A8 (smooth=True) or naive W8A8 (smooth=False) of `targets`, in place.
    cfg.options: alpha (default 0.5), act ("dynamic" or "static"). Needs calibration except for
    naive dynamic W8A8. Mutates the model: folded norms and rows, W8A8Linears."""
    alpha, act = resolve_options(cfg, smooth)
    if calib is None and (smooth or act == "static"):
        raise CompressError(("SmoothQuant" if smooth else "static activation scales") + " need calibration data")
    if calib is None:  # naive dynamic: nothing to measure
        for name, linear in progress(list(targets.items())):
            replace_module(model, name, w8a8_linear(linear.weight, linear.bias, "dynamic", None, None, False))
        set_w8a8_impl(model, "int")
        return
    batches = capture_block_inputs(model, calib)
    for i in progress(range(len(model.blocks))):
        block, prefix = model.blocks[i], f"blocks.{i}."
        inner = block_targets(targets, i)
        if inner:
            maxima = collect_maxima(inner, lambda: [block(b.hidden, *b.args, **b.kwargs) for b in batches])
            folded = fold_smoothing(block, prefix, inner, maxima, alpha) if smooth else {}
            _quantize_block(model, inner, maxima, folded, alpha, act, smooth)
        batches = run_block(block, batches)  # quantized: the next block sees what it will see in use
    if "lm_head" in targets:
        head = {"lm_head": targets["lm_head"]}

        def run_head():
            for b in batches:
                head["lm_head"](model.final_norm(b.hidden))

        _quantize_block(model, head, collect_maxima(head, run_head), {}, alpha, act, smooth)
    set_w8a8_impl(model, "int")


def naive_w8a8_apply(model, targets, cfg, calib, progress=iter) -> None:
    """W8A8 without smoothing: the baseline (registry entry "w8a8")."""
    smoothquant_apply(model, targets, cfg, calib, progress, smooth=False)

