"""The rule engine behind the encoder (hf_bert.py) and encoder-decoder (hf_t5.py) HF layouts.

A rule names one of our tensors and the HF tensors it is made of, concatenated along dim 0 when
several (q/k/v into `wqkv`, gate/up into a GLU's `w_in`). A part may carry a scale: T5 does not
divide attention logits by sqrt(D), which our attention does, so its query rows are stored times
sqrt(D) here and divided back on the way out (exact for the power-of-two head widths T5 uses).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .atomic import atomic_dir
from .errors import CheckpointError


@dataclass(frozen=True)
class Rule:
    ours: str  # our full key
    hf: tuple[str, ...]  # full HF keys, concatenated along dim 0
    sizes: tuple[int, ...] | None = None  # rows of each part (to split on the way out); None = one part
    scales: tuple[float, ...] | None = None  # ours = hf part x scale, per part; None = all 1


def few(names: list[str], n: int = 5) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def from_hf(sd: dict[str, torch.Tensor], rules: list[Rule], ignored: tuple[str, ...] = (),
            aliases: dict[str, tuple[str, ...]] | None = None) -> dict[str, torch.Tensor]:
    """HF tensors -> ours. Tensors absent from `sd` are absent from the result (`check_against`
    reports them); an HF tensor no rule takes is an error, except names ending in `ignored`.
    aliases: HF key -> other names the same (tied) tensor may be stored under instead."""
    remaining = dict(sd)
    for key, others in (aliases or {}).items():
        for other in others:
            if other in remaining:
                tensor = remaining.pop(other)
                remaining.setdefault(key, tensor)
    out = {}
    for rule in rules:
        present = [h for h in rule.hf if h in remaining]
        if not present:
            continue
        if len(present) < len(rule.hf):
            raise CheckpointError(f"checkpoint has {present} but lacks {sorted(set(rule.hf) - set(present))}")
        parts = [remaining.pop(h) for h in rule.hf]
        if rule.scales is not None:
            parts = [p * s if s != 1 else p for p, s in zip(parts, rule.scales)]
        try:
            out[rule.ours] = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
        except RuntimeError:
            shapes = [tuple(p.shape) for p in parts]
            raise CheckpointError(f"cannot fuse {list(rule.hf)}: incompatible shapes {shapes}") from None
    extra = sorted(k for k in remaining if not k.endswith(ignored))
    if extra:
        raise CheckpointError(f"unexpected tensors for this config: {few(extra)}")
    return out


def to_hf(sd: dict[str, torch.Tensor], rules: list[Rule], skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Our tensors -> HF names (views). Keys in `skip` (tied aliases) are dropped; others no rule
    knows are an error."""
    remaining = {k: v for k, v in sd.items() if k not in skip}
    out = {}
    for rule in rules:
        if rule.ours not in remaining:
            continue
        t = remaining.pop(rule.ours)
        parts = t.split(list(rule.sizes), 0) if len(rule.hf) > 1 else (t,)
        if rule.scales is not None:
            parts = [p / s if s != 1 else p for p, s in zip(parts, rule.scales)]
        out.update(zip(rule.hf, parts))
    if remaining:
        raise CheckpointError(f"tensors with no HF name: {few(sorted(remaining))}")
    return out


def check_against(model: nn.Module, sd: dict[str, torch.Tensor], rules, tied: tuple[str, ...],
                  arch: str | None = None) -> None:
    """Every tensor the model needs is in `sd` with its shape, and nothing more (tied aliases aside).
    rules: anything with `ours` and `hf` names (this module's Rule, or hf.py's for decoders);
    arch names the config in the messages."""
    config = f"the {arch} config" if arch else "the config"
    hf_names = {r.ours: "+".join(r.hf) for r in rules}
    expected = {k: v for k, v in model.state_dict().items() if k not in tied}
    missing = sorted(hf_names.get(k, k) for k in expected if k not in sd)
    if missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} tensors {config} needs: {few(missing)}")
    bad = [f"{hf_names.get(k, k)} is {tuple(sd[k].shape)}, config needs {tuple(v.shape)}"
           for k, v in expected.items() if sd[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"shape mismatch: {few(bad, 3)}")
    extra = sorted(set(sd) - set(expected))
    if extra:  # e.g. biases the config says the model does not have
        raise CheckpointError(f"checkpoint has tensors {config} does not use: {few(extra)}")


def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], dtype: torch.dtype | None) -> nn.Module:
    """Cast the parameters to dtype (None: the checkpoint's) and load `sd` (tied aliases already
    share storage, so they need no entry). Returns the model in eval mode."""
    if dtype is None:
        dtype = next((t.dtype for t in sd.values() if t.is_floating_point()), torch.float32)
    for p in model.parameters():
        p.data = p.data.to(dtype)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected  # check_against ran first
    return model.eval()


def write_hf_dir(path: str | os.PathLike, hf_config: dict, tensors: dict[str, torch.Tensor],
                 overwrite: bool = False) -> None:
    """config.json + model.safetensors, written atomically (the directory appears whole or not at all)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise CheckpointError(f"{path}: exists and is not empty (pass overwrite=True to replace it)")
    # fresh contiguous CPU copies: split views share storage, which safetensors refuses
    tensors = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
    with atomic_dir(path, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
