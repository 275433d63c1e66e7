"""Training checkpoints: written atomically, in safe formats, complete enough to resume exactly.

    RUN_DIR/checkpoints/step_00000100/
        model.safetensors        weights (a tied matrix stored once; the alias is in the metadata)
        model_config.json        the ModelConfig (not named config.json: this is not an HF directory)
        train_config.json        the TrainConfig of the run that wrote it
        optimizer.safetensors    AdamW moments and step counts, keyed "<parameter name>::<field>"
        optimizer.json           AdamW param groups (hyper-parameters, parameter names)
        trainer_state.json       step, data position (samples seen), grad-scaler state, timing

A checkpoint is written into a hidden temporary sibling, fsynced and renamed into place, so a run
killed at any moment (SIGKILL included) leaves only whole checkpoints under their final names; the
hidden leftovers are removed the next time the run starts. Nothing here is unpickled: tensors are
safetensors, everything else JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..checkpoints.atomic import atomic_dir
from ..checkpoints.errors import CheckpointError
from ..config import ModelConfig

FORMAT = "hybridlm-train-1"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary leftovers of a crash are not listed)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def remove_partial(run_dir: str | os.PathLike) -> list[str]:
    """Delete hidden temporaries a killed save left behind; returns their names."""
    root = checkpoint_dir(run_dir)
    gone = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step_"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                gone.append(p.name)
    return gone


def _dedupe(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses tensors sharing memory: keep one name per storage, return the aliases."""
    seen: dict[tuple, str] = {}
    out, aliases = {}, {}
    for name, t in sd.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        out[name] = t.contiguous()
    return out, aliases


def _flatten_optimizer(optim_sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for name, state in optim_sd.get("state", {}).items():
        for field, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}::{field}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{name}::{field}"] = value
    return tensors, {"param_groups": optim_sd.get("param_groups", []), "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[str, dict] = {}
    for key, value in [*tensors.items(), *meta.get("scalars", {}).items()]:
        name, field = key.rsplit("::", 1)
        state.setdefault(name, {})[field] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta.get("param_groups", [])]
    return {"state": state, "param_groups": groups}


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_checkpoint_files(tmp: Path, model_sd: dict, optim_sd: dict, model_cfg: ModelConfig,
                            train_cfg: dict, state: dict) -> None:
    weights, aliases = _dedupe(model_sd)
    save_file(weights, tmp / "model.safetensors", metadata={"format": "pt", "aliases": json.dumps(aliases)})
    (tmp / "model_config.json").write_text(model_cfg.to_json() + "\n")
    _write_json(tmp / "train_config.json", train_cfg)
    tensors, meta = _flatten_optimizer(optim_sd)
    save_file(tensors, tmp / "optimizer.safetensors")
    _write_json(tmp / "optimizer.json", meta)
    _write_json(tmp / "trainer_state.json", {"format": FORMAT, **state})
    _fsync_tree(tmp)


def save_checkpoint(run_dir: str | os.PathLike, step: int, model_sd: dict, optim_sd: dict,
                    model_cfg: ModelConfig, train_cfg: dict, state: dict, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep`. state: JSON-able
    trainer state (step, samples seen, ...). Returns the checkpoint directory."""
    path = checkpoint_dir(run_dir) / f"step_{step:08d}"
    with atomic_dir(path, overwrite=True) as tmp:
        _write_checkpoint_files(tmp, model_sd, optim_sd, model_cfg, train_cfg, state)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict, ModelConfig, dict]:
    """(model state dict, optimizer state dict, model config, trainer state) of a checkpoint directory."""
    path = Path(path)
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{path}: format {state.get('format')!r}, expected {FORMAT!r}")
        model_cfg = ModelConfig.from_json((path / "model_config.json").read_text())
        weights = load_file(path / "model.safetensors")
        with open(path / "model.safetensors", "rb") as f:  # the header holds the alias map
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        aliases = json.loads(header.get("__metadata__", {}).get("aliases", "{}"))
        optim_sd = _unflatten_optimizer(load_file(path / "optimizer.safetensors"),
                                        json.loads((path / "optimizer.json").read_text()))
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable training checkpoint ({e})") from None
    for alias, target in aliases.items():
        weights[alias] = weights[target]
    return weights, optim_sd, model_cfg, state
