"""Which linears LoRA adapts, and putting the adapters in place (the module itself: nn/lora.py).

Targets are named by role, one set of names for every family, each resolved against the block kinds
of the model's layer pattern:

    q k v o          attention: slices of the fused `wqkv` (rows [q; k; v]) and the output `wo`
    gate up down     MLP: for GLU the halves of the fused `w_in` (rows [gate; up]); `up` is the whole
                     `w_in` of a plain MLP (which has no gate); `down` is `w_out`
    in_proj out_proj Mamba-2's input and output projections

MoE experts are not adapted (their linears live in a batched expert tensor layout, not modules a
slice can name). The default is q, k, v, o, as PEFT's default for Llama models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from ..config import ModelConfig
from ..nn.lora import LoRALinear, lora_modules
from ..nn.mlp import is_glu

TARGETS = ("q", "k", "v", "o", "gate", "up", "down", "in_proj", "out_proj")
DEFAULT_TARGETS = ("q", "k", "v", "o")


class LoraError(ValueError):
    """LoRA settings that name nothing, or an adapter that does not fit its model."""


@dataclass
class LoraConfig:
    r: int = 8  # rank of each update B A
    alpha: float = 16.0  # the update is scaled by alpha / r (alpha / sqrt(r) with rslora)
    dropout: float = 0.0  # dropout on the adapter's input (training only)
    targets: tuple[str, ...] = DEFAULT_TARGETS  # roles to adapt: q k v o gate up down in_proj out_proj
    rslora: bool = False  # rank-stabilised scaling alpha / sqrt(r)

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise LoraError(f"unknown LoRA target(s) {unknown}; known: {', '.join(TARGETS)}")
        if not self.targets:
            raise LoraError("LoRA needs at least one target")
        if self.r <= 0 or not 0.0 <= self.dropout < 1.0:
            raise LoraError("LoRA rank must be positive and dropout in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


def _slices(kind: str, cfg: ModelConfig, targets: tuple[str, ...]) -> dict[str, dict[str, tuple[int, int]]]:
    """module path in a block of `kind` -> {target: (start, stop) rows} for the targets it holds."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    if kind == "attention":
        q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        rows = {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}
        out["mixer.wqkv"] = {t: rows[t] for t in "qkv" if t in targets}
        out["mixer.wo"] = {"o": (0, cfg.d_model)} if "o" in targets else {}
    elif kind == "mlp":
        d_ff = cfg.d_ff
        rows = {"gate": (0, d_ff), "up": (d_ff, 2 * d_ff)} if is_glu(cfg.mlp) else {"up": (0, d_ff)}
        out["mixer.w_in"] = {t: r for t, r in rows.items() if t in targets}
        out["mixer.w_out"] = {"down": (0, cfg.d_model)} if "down" in targets else {}
    elif kind == "mamba":
        out["mixer.in_proj"] = {"in_proj": (0, cfg.mamba_d_inner + cfg.mamba_conv_dim + cfg.mamba_n_heads)} \
            if "in_proj" in targets else {}
        out["mixer.out_proj"] = {"out_proj": (0, cfg.d_model)} if "out_proj" in targets else {}
    return {path: s for path, s in out.items() if s}


def target_slices(cfg: ModelConfig, targets: tuple[str, ...]) -> dict[str, dict[str, tuple[int, int]]]:
    """Qualified linear name (blocks.{i}.mixer.wqkv, ...) -> {target: rows} over the whole model.
    A target no block of this model holds is a LoraError (one line naming what the model has)."""
    found = {f"blocks.{i}.{path}": s for i, kind in enumerate(cfg.blocks) for path, s in _slices(kind, cfg, targets).items()}
    hit = {t for s in found.values() for t in s}
    missing = [t for t in targets if t not in hit]
    if missing:
        have = sorted({t for kind in set(cfg.blocks) for s in _slices(kind, cfg, TARGETS).values() for t in s},
                      key=TARGETS.index)
        raise LoraError(f"LoRA target(s) {missing} name no layer of this model (pattern {cfg.pattern!r}); "
                        f"it has: {', '.join(have) or 'none'}")
    return found


def apply_lora(model: nn.Module, lcfg: LoraConfig) -> dict[str, LoRALinear]:
    """Freeze every parameter of `model` (a Decoder) and wrap the target linears in LoRALinear; only
    the adapters train. Mutates `model`; returns the wrappers by qualified name."""
    if lora_modules(model):
        raise LoraError("this model already has LoRA adapters")
    plan = target_slices(model.config, lcfg.targets)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = {}
    for name, slices in plan.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        wrapped[name] = LoRALinear(getattr(parent, child), slices, lcfg.r, lcfg.alpha, lcfg.dropout, lcfg.rslora)
        setattr(parent, child, wrapped[name])
    return wrapped


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (in place)."""
    for m in lora_modules(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_modules(model).values():
        m.unmerge()


def strip_lora(model: nn.Module) -> nn.Module:
    """Merge, then put each base linear back in place of its wrapper (in place; returns `model`)."""
    for name, m in lora_modules(model).items():
        m.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, m.base)
    return model


def adapter_state_dict(model: nn.Module) -> dict:
    """Only the adapter tensors: {qualified wrapper name}.lora_A.{target} / .lora_B.{target}."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}
