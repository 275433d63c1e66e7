"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019) on DTensor, applied to a built `Decoder`.

The plan, block by block (a TP group of `tp` ranks; every rank sees the same tokens):

    attention   wqkv ColwiseParallel (each rank: n_heads/tp query heads and n_kv_heads/tp KV heads),
                wo RowwiseParallel (one all-reduce of the block's output)
    MLP         w_in ColwiseParallel ([gate; up] split per half for GLUs), w_out RowwiseParallel
    MoE         every expert split as an MLP; the router is replicated, so every rank routes alike
    Mamba-2     in_proj ColwiseParallel by heads and B/C groups ([z; x; B; C; dt] each split),
                conv1d, dt_bias, A_log, D and the gated norm's weight sliced to the rank's
                channels (plain parameters), out_proj RowwiseParallel: as Megatron's Nemotron-H
    the rest    embeddings, norms, router, LM head: replicated (their gradients are equal on every
                rank because ColwiseParallel all-reduces the gradient of its input)

Fused weights keep our canonical row order ([q; k; v], [z; x; B; C; dt], ...) in every state dict
outside this file. Before sharding, their rows are reordered so that rank r's contiguous slice
holds its own piece of each part (`interleave`); `deinterleave` undoes it, and `full_tensor`,
`full_state_dict`, `load_full_state_dict` and the sharded checkpoint (checkpoint.py) all speak the
canonical order, so a checkpoint written at one TP size loads at any other.

What cannot be split (refused by `check_tensor_parallel`): head, KV-head, Mamba head or group
counts not divisible by tp (Megatron replicates KV heads when tp > n_kv_heads; we do not), ALiBi
(its per-head slopes live on the model), encoder and seq2seq families.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from ..config import ModelConfig
from ..nn.mlp import is_glu


@dataclass(frozen=True)
class ShardSpec:
    dim: int  # the dimension split across the TP ranks
    segments: tuple[int, ...]  # canonical sizes along `dim` of the parts that split separately
    dtensor: bool  # held as a DTensor by parallelize_module (else a plain Parameter holding the slice)


@dataclass
class TensorParallel:
    """What `parallelize_tensor` did: the 1-D TP mesh and how each split parameter is split.
    Parameters not in `specs` are replicated (equal on every rank of the group)."""

    mesh: object  # torch DeviceMesh of the TP group
    specs: dict[str, ShardSpec]  # parameter name (as in model.state_dict()) -> its split

    @property
    def size(self) -> int:
        return self.mesh.size()

    @property
    def rank(self) -> int:
        return self.mesh.get_local_rank()

    @property
    def group(self):
        return self.mesh.get_group()


def check_tensor_parallel(cfg: ModelConfig, tp: int) -> None:
    """Raise ValueError naming the first thing in `cfg` that tp ranks cannot split."""
    if tp < 1:
        raise ValueError(f"--tp must be at least 1, got {tp}")
    if cfg.family != "decoder":
        raise ValueError(f"tensor parallelism covers decoder models; this is a {cfg.family} model")
    if tp == 1:
        return
    kinds = set(cfg.blocks)
    rules = []
    if "attention" in kinds:
        rules += [(cfg.n_heads, "n_heads"), (cfg.n_kv_heads, "n_kv_heads")]
        if cfg.position == "alibi":
            raise ValueError("tensor parallelism does not split ALiBi models (the slopes are per model, "
                             "not per rank)")
    if "mlp" in kinds:
        rules.append((cfg.d_ff, "d_ff"))
    if "moe" in kinds:
        rules.append((cfg.moe_d_ff, "moe_d_ff"))
        if cfg.moe_shared_expert_d_ff:
            rules.append((cfg.moe_shared_expert_d_ff, "moe_shared_expert_d_ff"))
    if "mamba" in kinds:
        rules += [(cfg.mamba_n_heads, "mamba_n_heads"), (cfg.mamba_n_groups, "mamba_n_groups")]
    for value, name in rules:
        if value % tp:
            raise ValueError(f"--tp {tp} does not divide {name} = {value}: each rank must hold whole "
                             f"heads, groups and channels (choose a tp that divides it)")


# -- the canonical <-> sharded row order -----------------------------------------------------------
def interleave(t: torch.Tensor, segments: tuple[int, ...], tp: int, dim: int) -> torch.Tensor:
    """Canonical [s0; s1; ...] along dim -> [s0_0; s1_0; ...; s0_1; s1_1; ...] where s_r is rank
    r's 1/tp of part s: rank r's pieces become one contiguous slice."""
    parts = [p.chunk(tp, dim) for p in t.split(list(segments), dim)]
    return torch.cat([part[r] for r in range(tp) for part in parts], dim)


def deinterleave(t: torch.Tensor, segments: tuple[int, ...], tp: int, dim: int) -> torch.Tensor:
    """The inverse of `interleave`."""
    per_rank = [r.split([s // tp for s in segments], dim) for r in t.chunk(tp, dim)]
    return torch.cat([per_rank[r][i] for i in range(len(segments)) for r in range(tp)], dim)


# -- applying the plan ------------------------------------------------------------------------------
def _reorder(linear: nn.Linear, segments: tuple[int, ...], tp: int) -> None:
    with torch.no_grad():
        for p in (linear.weight, linear.bias):
            if p is not None and len(segments) > 1:
                p.copy_(interleave(p, segments, tp, 0))


def _colwise(block: nn.Module, name: str, prefix: str, segments: tuple[int, ...], tp: int,
             specs: dict[str, ShardSpec]) -> None:
    """Mark `block.<name>` (a Linear) column-parallel over `segments` of its output rows."""
    linear = block.get_submodule(name)
    _reorder(linear, segments, tp)
    specs[f"{prefix}{name}.weight"] = ShardSpec(0, segments, True)
    if linear.bias is not None:
        specs[f"{prefix}{name}.bias"] = ShardSpec(0, segments, True)


def _slice_param(module: nn.Module, attr: str, full_name: str, segments: tuple[int, ...], tp: int, rank: int,
                 specs: dict[str, ShardSpec]) -> None:
    """Replace a per-channel parameter by this rank's slice (a plain Parameter)."""
    p = getattr(module, attr)
    if p is None:
        return
    local = interleave(p.detach(), segments, tp, 0).chunk(tp, 0)[rank].clone()
    setattr(module, attr, nn.Parameter(local, requires_grad=p.requires_grad))
    specs[full_name] = ShardSpec(0, segments, False)


def _mlp_plan(mlp: nn.Module, prefix: str, tp: int, specs: dict[str, ShardSpec]) -> dict:
    segments = (mlp.d_ff, mlp.d_ff) if is_glu(mlp.kind) else (mlp.d_ff,)
    _colwise(mlp, "w_in", prefix, segments, tp, specs)
    specs[f"{prefix}w_out.weight"] = ShardSpec(1, (mlp.d_ff,), True)
    mlp.d_ff //= tp
    return {"w_in": ColwiseParallel(), "w_out": RowwiseParallel()}


def _attention_plan(attn: nn.Module, prefix: str, tp: int, specs: dict[str, ShardSpec]) -> dict:
    h, h_kv, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
    _colwise(attn, "wqkv", prefix, (h * d, h_kv * d, h_kv * d), tp, specs)
    specs[f"{prefix}wo.weight"] = ShardSpec(1, (h * d,), True)
    attn.n_heads, attn.n_kv_heads = h // tp, h_kv // tp
    return {"wqkv": ColwiseParallel(), "wo": RowwiseParallel()}


def _mamba_plan(m: nn.Module, prefix: str, tp: int, rank: int, specs: dict[str, ShardSpec]) -> dict:
    gn = m.n_groups * m.d_state
    _colwise(m, "in_proj", prefix, (m.d_inner, m.d_inner, gn, gn, m.n_heads), tp, specs)
    specs[f"{prefix}out_proj.weight"] = ShardSpec(1, (m.d_inner,), True)
    conv = (m.d_inner, gn, gn)
    _slice_param(m.conv1d, "weight", f"{prefix}conv1d.weight", conv, tp, rank, specs)
    _slice_param(m.conv1d, "bias", f"{prefix}conv1d.bias", conv, tp, rank, specs)
    for attr in ("dt_bias", "A_log", "D"):
        _slice_param(m, attr, f"{prefix}{attr}", (m.n_heads,), tp, rank, specs)
    _slice_param(m.norm, "weight", f"{prefix}norm.weight", (m.d_inner,), tp, rank, specs)  # whole groups
    m.n_heads, m.n_groups, m.d_inner, m.conv_dim = m.n_heads // tp, m.n_groups // tp, m.d_inner // tp, m.conv_dim // tp
    return {"in_proj": ColwiseParallel(), "out_proj": RowwiseParallel()}


def parallelize_tensor(model: nn.Module, tp_mesh) -> TensorParallel:
    """Split `model` (a Decoder, identical on every rank of `tp_mesh`, before any optimizer is made)
    over the 1-D mesh `tp_mesh`. Mutates the model in place; returns the record of what was split."""
    cfg, tp, rank = model.config, tp_mesh.size(), tp_mesh.get_local_rank()
    check_tensor_parallel(cfg, tp)
    specs: dict[str, ShardSpec] = {}
    for i, block in enumerate(model.blocks):
        prefix, mixer = f"blocks.{i}.mixer.", block.mixer
        if block.kind == "attention":
            plan = _attention_plan(mixer, prefix, tp, specs)
        elif block.kind == "mlp":
            plan = _mlp_plan(mixer, prefix, tp, specs)
        elif block.kind == "mamba":
            plan = _mamba_plan(mixer, prefix, tp, rank, specs)
        else:  # moe
            plan = {}
            for e, expert in enumerate(mixer.experts):
                plan |= {f"experts.{e}.{k}": v for k, v in _mlp_plan(expert, f"{prefix}experts.{e}.", tp, specs).items()}
            if mixer.shared is not None:
                plan |= {f"shared.{k}": v for k, v in _mlp_plan(mixer.shared, f"{prefix}shared.", tp, specs).items()}
        parallelize_module(mixer, tp_mesh, plan)
    return TensorParallel(tp_mesh, specs)


# -- reading and writing the canonical (unsplit) tensors ---------------------------------------------
def local_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def full_tensor(tp: TensorParallel, name: str, t: torch.Tensor) -> torch.Tensor:
    """The canonical whole tensor of parameter `name` (its value or its gradient `t`) on every rank.
    A collective over the TP group for split parameters."""
    spec = tp.specs.get(name)
    if spec is None:
        return t.full_tensor() if isinstance(t, DTensor) else t
    local = local_tensor(t).contiguous()
    pieces = [torch.empty_like(local) for _ in range(tp.size)]
    dist.all_gather(pieces, local, group=tp.group)
    return deinterleave(torch.cat(pieces, spec.dim), spec.segments, tp.size, spec.dim)


def full_state_dict(model: nn.Module, tp: TensorParallel) -> dict[str, torch.Tensor]:
    """The model's state dict in canonical form, on every rank (what an unsplit model would have)."""
    return {name: full_tensor(tp, name, t.detach()).cpu() for name, t in model.state_dict().items()}


def shard_of(tp: TensorParallel, name: str, full: torch.Tensor) -> torch.Tensor:
    """This rank's local piece of the canonical tensor `full` of parameter `name`."""
    spec = tp.specs.get(name)
    if spec is None:
        return full
    return interleave(full, spec.segments, tp.size, spec.dim).chunk(tp.size, spec.dim)[tp.rank]


@torch.no_grad()
def load_full_state_dict(model: nn.Module, tp: TensorParallel, state: dict[str, torch.Tensor]) -> None:
    """Copy a canonical state dict into the split model (each rank keeps its pieces). Mutates model."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise KeyError(f"state dict lacks {missing[:5]}")
    for name, t in own.items():
        local_tensor(t).copy_(shard_of(tp, name, state[name]))


def grad_norm(model: nn.Module, tp: TensorParallel) -> torch.Tensor:
    """Global L2 norm of the gradients of a TP-split model, () float64 equal on every rank of the
    group: split parameters add their local squares on every rank, replicated ones on rank 0 only."""
    total = torch.zeros((), dtype=torch.float64)
    for name, p in model.named_parameters():
        if p.grad is not None and (name in tp.specs or tp.rank == 0):
            total += local_tensor(p.grad).double().pow(2).sum().cpu()
    dist.all_reduce(total, group=tp.group)
    return total.sqrt()


@torch.no_grad()
def clip_grad_norm(model: nn.Module, tp: TensorParallel, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ for a TP-split model (DTensor and plain gradients mixed,
    which torch's version refuses). Scales the gradients in place; returns the norm before."""
    norm = grad_norm(model, tp)
    scale = max_norm / (float(norm) + 1e-6)
    if scale < 1.0:
        for p in model.parameters():
            if p.grad is not None:
                local_tensor(p.grad).mul_(scale)
    return norm
