"""LoRA adapters in PEFT's on-disk format, both ways.

    ADAPTER_DIR/adapter_config.json         PEFT's LoraConfig (peft_type LORA, r, lora_alpha, ...)
    ADAPTER_DIR/adapter_model.safetensors   base_model.model.<HF module>.lora_A.weight (r, in)
                                            base_model.model.<HF module>.lora_B.weight (out, r)

The HF module of each of our slices comes from the checkpoint key maps (checkpoints/hf.py,
`hf_linear_names`): our fused wqkv is HF's q_proj, k_proj and v_proj in that order, GLU w_in is
gate_proj then up_proj, so our slice of role q is PEFT's q_proj adapter, tensor for tensor. A PEFT
adapter written by `peft` for the same HF model therefore loads here unchanged, and ours loads into
`peft` over `transformers`. What PEFT can express and we cannot (DoRA, per-layer rank or alpha
patterns, trained biases, GPT-2's transposed Conv1D) is refused by name.
"""

from __future__ import annotations

import json
import os
from copy import deepcopy
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoints.atomic import atomic_dir
from ..checkpoints.hf import hf_arch_for, hf_linear_names
from ..config import ModelConfig
from ..nn.lora import lora_modules
from ..nn.mlp import is_glu
from .lora import TARGETS, LoraConfig, LoraError, apply_lora, target_slices

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."


def _roles(module: str, cfg: ModelConfig) -> tuple[str, ...]:
    """Our target roles of a linear's row slices, in row order (the order of its HF modules)."""
    leaf = module.rsplit(".", 1)[-1]
    if leaf == "w_in":
        return ("gate", "up") if is_glu(cfg.mlp) else ("up",)
    return {"wqkv": ("q", "k", "v"), "wo": ("o",), "w_out": ("down",), "in_proj": ("in_proj",),
            "out_proj": ("out_proj",)}.get(leaf, ())


def role_names(cfg: ModelConfig, arch: str | None = None) -> dict[tuple[str, str], str]:
    """(our linear, role) -> the HF module PEFT names, for every adaptable slice of `cfg`."""
    arch = arch or hf_arch_for(cfg)
    out = {}
    for ours, hf in hf_linear_names(cfg, arch).items():
        roles = _roles(ours, cfg)
        if roles and len(roles) == len(hf):
            out.update({(ours, role): name for role, name in zip(roles, hf)})
    return out


def to_peft(model: nn.Module, arch: str | None = None) -> dict[str, torch.Tensor]:
    """The adapters of a LoRA-wrapped Decoder under PEFT's key names (fresh contiguous CPU tensors)."""
    names = role_names(model.config, arch)
    out = {}
    for module, m in lora_modules(model).items():
        for role in m.slices:
            if (module, role) not in names:
                raise LoraError(f"{module} ({role}) has no HF module a PEFT adapter can name")
            key = PREFIX + names[module, role]
            out[key + ".lora_A.weight"] = m.lora_A[role].detach().cpu().float().contiguous()
            out[key + ".lora_B.weight"] = m.lora_B[role].detach().cpu().float().contiguous()
    return out


def peft_config(lcfg: LoraConfig, targets_hf: list[str], base: str) -> dict:
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": lcfg.r,
            "lora_alpha": lcfg.alpha, "lora_dropout": lcfg.dropout, "use_rslora": lcfg.rslora,
            "target_modules": targets_hf, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
            "init_lora_weights": True, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
            "use_dora": False, "layers_to_transform": None, "layers_pattern": None}


def save_adapter(model: nn.Module, lcfg: LoraConfig, path: str | os.PathLike, base: str = "",
                 overwrite: bool = False) -> Path:
    """Write the adapters of `model` as a PEFT adapter directory (atomically). base: the base model's
    name or path, recorded as base_model_name_or_path."""
    tensors = to_peft(model)
    leaves = sorted({k.rpartition(".lora_")[0].rsplit(".", 1)[-1] for k in tensors})
    path = Path(path)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(peft_config(lcfg, leaves, base), indent=2, sort_keys=True) + "\n")
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
    return path


def read_adapter(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json as a dict, tensors under PEFT's keys) of an adapter directory."""
    path = Path(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
        tensors = load_file(path / WEIGHTS_FILE)
    except FileNotFoundError:
        raise LoraError(f"{path} is not a PEFT adapter directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})") from None
    except (OSError, ValueError, SafetensorError) as e:
        raise LoraError(f"{path}: unreadable adapter ({e})") from None
    return config, tensors


def _lora_config(config: dict, path) -> LoraConfig:
    refused = [(config.get("peft_type", "LORA") != "LORA", f"peft_type {config.get('peft_type')!r} (only LORA)"),
               (bool(config.get("use_dora")), "DoRA"),
               (bool(config.get("rank_pattern")) or bool(config.get("alpha_pattern")), "per-layer rank/alpha patterns"),
               (config.get("bias", "none") != "none", f"trained biases (bias={config.get('bias')!r})"),
               (bool(config.get("fan_in_fan_out")), "fan_in_fan_out (GPT-2 Conv1D layers)"),
               (bool(config.get("modules_to_save")), "modules_to_save (fully trained extra modules)")]
    for bad, what in refused:
        if bad:
            raise LoraError(f"{path}: the adapter uses {what}, which hybridlm's LoRA does not support")
    return LoraConfig(r=int(config["r"]), alpha=float(config.get("lora_alpha", 8)),
                      dropout=float(config.get("lora_dropout") or 0.0), rslora=bool(config.get("use_rslora")))


def load_adapter(model: nn.Module, path: str | os.PathLike) -> LoraConfig:
    """Wrap `model` (a Decoder, float or quantized) with the adapter at `path` (PEFT format) and load
    its weights; the model is left frozen, adapters unmerged. A tensor whose shape does not match the
    model's layer, or a key no layer of the model has, is a LoraError and the model is not changed."""
    config, tensors = read_adapter(path)
    lcfg = _lora_config(config, path)
    by_hf = {name: key for key, name in role_names(model.config).items()}
    ours: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        stem, _, kind = key.removeprefix(PREFIX).rpartition(".lora_")
        if kind not in ("A.weight", "B.weight") or stem not in by_hf:
            raise LoraError(f"{path}: adapter tensor {key!r} names no adaptable layer of this model")
        ours.setdefault(by_hf[stem], {})[kind[0]] = t
    targets = tuple(t for t in TARGETS if any(role == t for _, role in ours))
    lcfg = LoraConfig(lcfg.r, lcfg.alpha, lcfg.dropout, targets, lcfg.rslora)
    _check_shapes(model, ours, lcfg, path)
    wrapped = apply_lora(model, lcfg)  # layers the adapter does not cover keep B = 0: no update
    with torch.no_grad():
        for (module, role), pair in ours.items():
            wrapped[module].lora_A[role].copy_(pair["A"])
            wrapped[module].lora_B[role].copy_(pair["B"])
    return lcfg


def _check_shapes(model: nn.Module, ours: dict, lcfg: LoraConfig, path) -> None:
    plan = target_slices(model.config, lcfg.targets)
    for (module, role), pair in ours.items():
        if set(pair) != {"A", "B"}:
            raise LoraError(f"{path}: {module} ({role}) has lora_{next(iter(pair))} but not both A and B")
        start, stop = plan[module][role]
        in_features = model.get_submodule(module).in_features
        want = {"A": (lcfg.r, in_features), "B": (stop - start, lcfg.r)}
        for k, t in pair.items():
            if tuple(t.shape) != want[k]:
                raise LoraError(f"{path}: lora_{k} of {module} ({role}) is {tuple(t.shape)}, but this model's "
                                f"layer needs {want[k]}: the adapter was made for a different base model")


def adapter_copy(model: nn.Module, path: str | os.PathLike) -> tuple[nn.Module, LoraConfig]:
    """A copy of `model` that shares every weight tensor with it and carries the adapter at `path`,
    unmerged (so any number of adapters sit over one set of base weights). `model` is not changed."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    copy = deepcopy(model, shared)
    return copy, load_adapter(copy, path)
