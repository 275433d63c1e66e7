"""Sharded checkpoints with torch.distributed.checkpoint (DCP): each rank writes only its pieces,
and a checkpoint written at one tensor-parallel size loads at any other (or into a plain model).

The trick is to save in the canonical layout. A split parameter's local slice is, part by part
([q; k; v], [gate; up], [z; x; B; C; dt], ...), a contiguous row block of that part's canonical
tensor, so each part is saved as its own DTensor (`Shard(dim)`) under "NAME/partI" (or "NAME"
for one part). DCP records every shard's global offset; on load it reads whatever overlaps the
reader's own pieces, so every change of TP size is one code path (tested: tp 1 -> tp 2 and
tp 2 -> one process). Layouts with FSDP2 on top of TP are not saved this way (`train --tp` writes
the consolidated checkpoint instead).
Replicated tensors are written once (DCP de-duplicates them across ranks).

    DIR/                   a DCP directory (.metadata + one __R_0.distcp per rank)
    DIR/trainer_state.json step, samples seen, model config, the layout that wrote it

The AdamW moments are saved beside the weights ("optim/NAME/exp_avg", ...) in the same canonical
form. A checkpoint is written into a hidden sibling and renamed when every rank has finished.
DCP stores its .metadata with pickle (torch's format, not ours): load only sharded checkpoints
your own runs wrote. The portable, pickle-free format stays the trainer's safetensors checkpoint
(train/checkpoint.py), which `hybridlm train --tp` writes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.tensor import DTensor, Shard

from .tensor import ShardSpec, TensorParallel, local_tensor, shard_specs

STATE = "trainer_state.json"
_ADAM_FIELDS = ("exp_avg", "exp_avg_sq")


def _parts(name: str, t: torch.Tensor, spec: ShardSpec | None, tp: TensorParallel | None) -> dict[str, torch.Tensor]:
    """The entries of one tensor in the canonical checkpoint layout (views of `t`'s storage)."""
    local = local_tensor(t)
    if spec is None:
        return {name: local}
    size = tp.size if tp is not None else 1
    pieces = local.split([s // size for s in spec.segments], spec.dim)
    out = {}
    for i, (piece, whole) in enumerate(zip(pieces, spec.segments)):
        key = name if len(pieces) == 1 else f"{name}/part{i}"
        if tp is None or tp.size == 1:
            out[key] = piece
            continue
        shape = list(local.shape)
        shape[spec.dim] = whole
        stride = torch.empty(shape, device="meta").stride()
        out[key] = DTensor.from_local(piece, tp.mesh, [Shard(spec.dim)], run_check=False, shape=torch.Size(shape),
                                      stride=stride)
    return out


def _optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, dict]:
    """Parameter name -> its AdamW state (created as zeros when the optimizer has not stepped yet)."""
    if optimizer is None:
        return {}
    out = {}
    for name, p in model.named_parameters():
        state = optimizer.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            for field in _ADAM_FIELDS:
                state[field] = torch.zeros_like(p, memory_format=torch.preserve_format)
        out[name] = state
    return out


def canonical_entries(model: nn.Module, tp: TensorParallel | None,
                      optimizer: torch.optim.Optimizer | None = None) -> dict[str, torch.Tensor]:
    """The flat dict DCP saves and loads into: model tensors and AdamW moments in canonical parts."""
    specs = shard_specs(model.config)
    entries: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        entries |= _parts(name, t, specs.get(name), tp)
    for name, state in _optimizer_state(model, optimizer).items():
        entries[f"optim/{name}/step"] = state["step"]
        for field in _ADAM_FIELDS:
            entries |= _parts(f"optim/{name}/{field}", state[field], specs.get(name), tp)
    return entries


def _rank0(fn) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        fn()
    if dist.is_initialized():
        dist.barrier()


def save_sharded(path: str | Path, model: nn.Module, tp: TensorParallel | None,
                 optimizer: torch.optim.Optimizer | None = None, state: dict | None = None) -> Path:
    """Write the sharded checkpoint DIR (see the module docstring). Collective: every rank calls it."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    _rank0(lambda: (shutil.rmtree(tmp, ignore_errors=True), tmp.mkdir(parents=True)))
    dcp.save(canonical_entries(model, tp, optimizer), checkpoint_id=str(tmp))
    record = {"model_config": model.config.to_dict(), "tp": tp.size if tp is not None else 1, **(state or {})}

    def finish():
        (tmp / STATE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)

    _rank0(finish)
    return path


def load_sharded(path: str | Path, model: nn.Module, tp: TensorParallel | None,
                 optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Load a sharded checkpoint into `model` (split by `tp`, or plain with None) and its optimizer,
    whatever layout wrote it. Mutates both; returns the saved trainer state. Collective."""
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{path}: not a sharded checkpoint (no .metadata)")
    entries = canonical_entries(model, tp, optimizer)
    dcp.load(entries, checkpoint_id=str(path))
    with torch.no_grad():  # DCP fills the entries in place; copy back anything it had to replace
        fresh = canonical_entries(model, tp, optimizer)
        for key, t in entries.items():
            if local_tensor(fresh[key]).data_ptr() != local_tensor(t).data_ptr():
                local_tensor(fresh[key]).copy_(local_tensor(t))
    return json.loads((path / STATE).read_text())
