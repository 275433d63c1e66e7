"""`prune_model`: the one entry point (the CLI and the benchmark call it), and `save_pruned`.

Everything that can be checked is checked before any weight changes: the request (config.py),
then the model (a float Decoder; enough channels, heads or layers left), then calibration data
present when the importance or the recovery needs it. Masks (magnitude, 2:4) change the model in
place; structured methods return a new, smaller model.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...nn.quant import QuantLinear
from ..calibration import Calibration
from .config import PruneConfig, PruneError, fraction_count, resolve_prune_config
from .importance import head_scores, layer_scores, mlp_channel_scores, prunable_linears, weight_scores
from .magnitude import apply_masks, magnitude_masks, sparsity
from .recovery import RecoveryResult, recover
from .sparsity24 import n_m_masks
from .structured import (attention_blocks, keep_heads, keep_highest, layer_units, mlp_blocks, remove_heads,
                         remove_layers, remove_mlp_channels)

PRUNING_FILE = "pruning.json"


@dataclass
class PruneSummary:
    """What `prune_model` did."""

    config: PruneConfig  # resolved (defaults filled in)
    params_before: int  # parameters (a tied matrix once)
    params_after: int
    nonzero_before: int  # parameters that are not exactly zero
    nonzero_after: int
    sparsity: float | None  # masks: fraction of zeros over the pruned linears
    shape: dict[str, Any]  # the pruned dimension(s): d_ff, heads, layers, before and after
    removed: dict[str, Any]  # what went: per block channel/head indices, layer indices, or weight count
    seconds: float
    calibration_tokens: int = 0
    recovery: RecoveryResult | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["config"] = self.config.to_dict()
        return out


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters); a tied matrix counts once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int((p != 0).sum()) for p in params)


def _count(amount: float, of: int, what: str, unit: str) -> int:
    """How many of `of` structures `amount` removes; PruneError if none or all."""
    n = fraction_count(amount, of)
    if n == 0:
        raise PruneError(f"--amount {amount} removes no {what} ({of} {unit}); use at least {0.5 / of:.3g}")
    if n >= of:
        raise PruneError(f"--amount {amount} would remove all {of} {what} {unit}, leaving zero")
    return n


def head_unit_for(model: nn.Module, cfg: PruneConfig) -> str:
    mc = model.config
    return cfg.head_unit or ("group" if mc.n_heads == mc.n_kv_heads else "query")


def plan(model: nn.Module, cfg: PruneConfig) -> dict[str, Any]:
    """Check that `cfg` (resolved) can prune `model`; how many of what it removes. Reads nothing heavy."""
    if not hasattr(model, "blocks") or getattr(getattr(model, "config", None), "family", "decoder") != "decoder":
        raise PruneError("pruning works on decoder-only models")
    quantized = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    if quantized:
        raise PruneError(f"the model is quantized ({quantized[0]} is a QuantLinear); prune the float model, "
                         "then quantize it")
    mc = model.config
    if cfg.method in ("magnitude", "2:4"):
        if not prunable_linears(model):
            raise PruneError("the model has no linear layers inside its blocks to prune")
        return {"fraction": cfg.amount}
    if cfg.method == "channels":
        if not mlp_blocks(model):
            raise PruneError("the model has no dense MLP blocks to prune channels from")
        return {"channels": _count(cfg.amount, mc.d_ff, "MLP channels", "per block")}
    if cfg.method == "heads":
        if not attention_blocks(model):
            raise PruneError("the model has no attention blocks to prune heads from")
        if mc.position == "alibi":
            raise PruneError("ALiBi's slopes depend on the number of heads: its heads cannot be pruned")
        unit = head_unit_for(model, cfg)
        rep = mc.n_heads // mc.n_kv_heads
        if unit == "query" and rep == 1:
            raise PruneError("each KV group has one query head (MHA): use --head-unit group")
        of, what = (rep, "query heads per KV group") if unit == "query" else (mc.n_kv_heads, "KV groups")
        return {"unit": unit, "heads": _count(cfg.amount, of, what, "in each attention block")}
    units = layer_units(mc)
    return {"layers": _count(cfg.amount, len(units), "layers", "in the model")}


def _removed(kept: torch.Tensor, total: int) -> list[int]:
    return sorted(set(range(total)) - set(kept.tolist()))


def prune_model(model: nn.Module, cfg: PruneConfig, calib: Calibration | None = None, progress: bool = False
                ) -> tuple[nn.Module, PruneSummary]:
    """Prune `model` as `cfg` says. Masks change it in place; structured methods return a new, smaller
    model (the input is then left unchanged). calib: token sequences for activation or gradient
    importance and for recovery. Returns (the pruned model, what was done)."""
    start = time.perf_counter()
    cfg = resolve_prune_config(cfg)
    counts = plan(model, cfg)
    if cfg.needs_calibration and calib is None:
        raise PruneError(f"{cfg.importance} importance and recovery need calibration data")
    before, nonzero_before = count_parameters(model)
    was_training = model.training
    model.eval()
    masks, frac, mc = None, None, model.config
    if cfg.method in ("magnitude", "2:4"):
        names = list(prunable_linears(model))
        scores = weight_scores(model, names, cfg.importance, calib)
        masks = magnitude_masks(scores, cfg.amount, cfg.scope) if cfg.method == "magnitude" else n_m_masks(scores)
        apply_masks(model, masks)
        frac = sparsity(model, names)
        shape, removed = {"linears": len(names)}, {"weights": int(sum(int((~m).sum()) for m in masks.values()))}
    elif cfg.method == "channels":
        keep = {i: keep_highest(s, counts["channels"]) for i, s in mlp_channel_scores(model, cfg.importance, calib).items()}
        removed = {"channels": {i: _removed(k, mc.d_ff) for i, k in keep.items()}}
        model = remove_mlp_channels(model, keep)
        shape = {"d_ff": [mc.d_ff, model.config.d_ff]}
    elif cfg.method == "heads":
        keep_q, keep_kv = {}, {}
        for i, (q, kv) in head_scores(model, cfg.importance, calib).items():
            keep_q[i], keep_kv[i] = keep_heads(q, kv, mc.n_kv_heads, counts["heads"], counts["unit"])
        removed = {"unit": counts["unit"], "query_heads": {i: _removed(k, mc.n_heads) for i, k in keep_q.items()},
                   "kv_heads": {i: _removed(k, mc.n_kv_heads) for i, k in keep_kv.items()}}
        model = remove_heads(model, keep_q, keep_kv)
        shape = {"n_heads": [mc.n_heads, model.config.n_heads], "n_kv_heads": [mc.n_kv_heads, model.config.n_kv_heads]}
    else:
        scores = layer_scores(model, cfg.importance, calib)
        kept = keep_highest(scores, counts["layers"])
        removed = {"layers": _removed(kept, len(scores)), "scores": [round(s, 6) for s in scores.tolist()]}
        model = remove_layers(model, kept.tolist())
        shape = {"layers": [len(scores), len(layer_units(model.config))]}
    recovery = None
    if cfg.recover_steps:
        recovery = recover(model, calib, cfg.recover_steps, cfg.recover_lr, cfg.recover_batch, cfg.seed,
                           masks=masks, progress=progress)
        if masks is not None:
            frac = sparsity(model, list(masks))
    model.train(was_training)
    after, nonzero_after = count_parameters(model)
    return model, PruneSummary(cfg, before, after, nonzero_before, nonzero_after, frac, shape, removed,
                               time.perf_counter() - start, 0 if calib is None else calib.n_tokens, recovery)


def save_pruned(model: nn.Module, tokenizer, path: str | os.PathLike, summary: PruneSummary | None = None,
                overwrite: bool = False) -> Path:
    """Write a pruned model as an HF checkpoint directory (config.json + safetensors + tokenizer, so
    every command loads it) with PRUNING_FILE describing the pruning, atomically."""
    from ...checkpoints.atomic import atomic_dir
    from ...checkpoints.errors import CheckpointError
    from ...checkpoints.hf import hf_arch_for, save_hf_checkpoint

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise CheckpointError(f"{path} exists and is not empty (use --overwrite to replace it)")
    arch = hf_arch_for(model.config)  # before anything is written: a config HF cannot express fails here
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_hf_checkpoint(model, tmp, arch)
        if tokenizer is not None:
            tokenizer.to_hf_files(tmp)
        if summary is not None:
            (tmp / PRUNING_FILE).write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
    return path
