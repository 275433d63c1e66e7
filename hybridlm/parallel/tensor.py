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
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from ..analysis.parallel import tp_problem
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
    """Raise ValueError naming the first thing in `cfg` that tp ranks cannot split (the rules are
    the cost model's too: analysis/parallel.py `tp_problem`)."""
    problem = tp_problem(cfg, tp)
    if problem is not None:
        raise ValueError(problem)


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


# -- the plan: a function of the config ------------------------------------------------------------
def _mlp_specs(prefix: str, d_ff: int, cfg: ModelConfig) -> dict[str, ShardSpec]:
    segments = (d_ff, d_ff) if is_glu(cfg.mlp) else (d_ff,)
    specs = {f"{prefix}w_in.weight": ShardSpec(0, segments, True), f"{prefix}w_out.weight": ShardSpec(1, (d_ff,), True)}
    if cfg.mlp_bias:
        specs[f"{prefix}w_in.bias"] = ShardSpec(0, segments, True)
    return specs


def shard_specs(cfg: ModelConfig) -> dict[str, ShardSpec]:
    """Every split parameter of a Decoder built from `cfg` -> how it splits (any TP size)."""
    specs: dict[str, ShardSpec] = {}
    for i, kind in enumerate(cfg.blocks):
        prefix = f"blocks.{i}.mixer."
        if kind == "attention":
            h, h_kv, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
            qkv = ShardSpec(0, (h * d, h_kv * d, h_kv * d), True)
            specs[f"{prefix}wqkv.weight"] = qkv
            if cfg.qkv_bias:
                specs[f"{prefix}wqkv.bias"] = qkv
            specs[f"{prefix}wo.weight"] = ShardSpec(1, (h * d,), True)
        elif kind == "mlp":
            specs |= _mlp_specs(prefix, cfg.d_ff, cfg)
        elif kind == "moe":
            for e in range(cfg.n_experts):
                specs |= _mlp_specs(f"{prefix}experts.{e}.", cfg.moe_d_ff, cfg)
            if cfg.moe_shared_expert_d_ff:
                specs |= _mlp_specs(f"{prefix}shared.", cfg.moe_shared_expert_d_ff, cfg)
        elif kind == "mamba":
            d_inner, gn, h = cfg.mamba_d_inner, cfg.mamba_n_groups * cfg.d_state, cfg.mamba_n_heads
            specs[f"{prefix}in_proj.weight"] = ShardSpec(0, (d_inner, d_inner, gn, gn, h), True)
            if cfg.mamba_proj_bias:
                specs[f"{prefix}in_proj.bias"] = specs[f"{prefix}in_proj.weight"]
            specs[f"{prefix}out_proj.weight"] = ShardSpec(1, (d_inner,), True)
            specs[f"{prefix}conv1d.weight"] = ShardSpec(0, (d_inner, gn, gn), False)
            if cfg.mamba_conv_bias:
                specs[f"{prefix}conv1d.bias"] = specs[f"{prefix}conv1d.weight"]
            for name in ("dt_bias", "A_log", "D"):
                specs[f"{prefix}{name}"] = ShardSpec(0, (h,), False)
            specs[f"{prefix}norm.weight"] = ShardSpec(0, (d_inner,), False)  # whole norm groups per rank
    return specs


def _styles(block: nn.Module) -> dict:
    """The parallelize_module plan of one block's mixer."""
    m = block.mixer
    if block.kind == "attention":
        return {"wqkv": ColwiseParallel(), "wo": RowwiseParallel()}
    if block.kind == "mlp":
        return {"w_in": ColwiseParallel(), "w_out": RowwiseParallel()}
    if block.kind == "mamba":
        return {"in_proj": ColwiseParallel(), "out_proj": RowwiseParallel()}
    experts = [f"experts.{e}" for e in range(len(m.experts))] + (["shared"] if m.shared is not None else [])
    return {k: v for name in experts for k, v in (((f"{name}.w_in", ColwiseParallel()),
                                                  (f"{name}.w_out", RowwiseParallel())))}


def _divide_sizes(block: nn.Module, tp: int) -> None:
    """The split mixer computes with its local head, group and channel counts."""
    m = block.mixer
    if block.kind == "attention":
        m.n_heads, m.n_kv_heads = m.n_heads // tp, m.n_kv_heads // tp
    elif block.kind == "mlp":
        m.d_ff //= tp
    elif block.kind == "mamba":
        m.n_heads, m.n_groups, m.d_inner, m.conv_dim = m.n_heads // tp, m.n_groups // tp, m.d_inner // tp, m.conv_dim // tp
    else:
        for mlp in [*m.experts, *([m.shared] if m.shared is not None else [])]:
            mlp.d_ff //= tp


@torch.no_grad()
def parallelize_tensor(model: nn.Module, tp_mesh) -> TensorParallel:
    """Split `model` (a Decoder, identical on every rank of `tp_mesh`, before any optimizer is made)
    over the 1-D mesh `tp_mesh`. Mutates the model in place; returns the record of what was split."""
    cfg, tp, rank = model.config, tp_mesh.size(), tp_mesh.get_local_rank()
    check_tensor_parallel(cfg, tp)
    specs = shard_specs(cfg)
    for name, spec in specs.items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        reordered = interleave(getattr(owner, attr).detach(), spec.segments, tp, spec.dim)
        if spec.dtensor:  # parallelize_module below takes contiguous slices of the reordered rows
            getattr(owner, attr).copy_(reordered)
        else:
            local = reordered.chunk(tp, spec.dim)[rank].clone()
            setattr(owner, attr, nn.Parameter(local, requires_grad=getattr(owner, attr).requires_grad))
    for block in model.blocks:
        _divide_sizes(block, tp)
        parallelize_module(block.mixer, tp_mesh, _styles(block))
    return TensorParallel(tp_mesh, specs)


# -- reading and writing the canonical (unsplit) tensors ---------------------------------------------
def local_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def full_tensor(tp: TensorParallel, name: str, t: torch.Tensor) -> torch.Tensor:
    """The canonical whole tensor of parameter `name` (its value, gradient or optimizer moment `t`)
    on every rank, whatever wraps it (TP DTensor, FSDP2 DTensor on top, or a plain TP slice).
    A collective over the groups `t` is spread over."""
    spec = tp.specs.get(name)
    whole = t.full_tensor() if isinstance(t, DTensor) else t  # the global view: rows still interleaved
    if spec is None:
        return whole
    if not spec.dtensor:  # a plain per-rank slice: gather the TP group's slices
        whole = whole.contiguous()
        pieces = [torch.empty_like(whole) for _ in range(tp.size)]
        dist.all_gather(pieces, whole, group=tp.group)
        whole = torch.cat(pieces, spec.dim)
    return deinterleave(whole, spec.segments, tp.size, spec.dim)


def full_state_dict(model: nn.Module, tp: TensorParallel) -> dict[str, torch.Tensor]:
    """The model's state dict in canonical form, on every rank (what an unsplit model would have)."""
    return {name: full_tensor(tp, name, t.detach()).cpu() for name, t in model.state_dict().items()}


@torch.no_grad()
def load_full_tensor(tp: TensorParallel, name: str, target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy this rank's piece of the canonical tensor `full` of parameter `name` into `target` (the
    parameter or one of its optimizer moments, as `full_tensor` reads them). Mutates target."""
    spec = tp.specs.get(name)
    view = full.to(local_tensor(target).device)
    if spec is not None:
        view = interleave(view, spec.segments, tp.size, spec.dim)
        if not spec.dtensor:
            view = view.chunk(tp.size, spec.dim)[tp.rank]
    if isinstance(target, DTensor):
        view = distribute_tensor(view, target.device_mesh, target.placements).to_local()
    local_tensor(target).copy_(view)


def load_full_state_dict(model: nn.Module, tp: TensorParallel, state: dict[str, torch.Tensor]) -> None:
    """Copy a canonical state dict into the split model (each rank keeps its pieces). Mutates model."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise KeyError(f"state dict lacks {missing[:5]}")
    for name, t in own.items():
        load_full_tensor(tp, name, t, state[name])


def grad_norm(model: nn.Module, tp: TensorParallel, dp_group=None) -> torch.Tensor:
    """Global L2 norm of the gradients of a TP-split model, () float64 equal on every rank: split
    parameters add their local squares on every TP rank, replicated ones on TP rank 0 only.
    dp_group: the data-parallel group when FSDP2 shards the gradients over it (None under DDP,
    whose gradients are already whole and equal on every replica)."""
    total = torch.zeros((), dtype=torch.float64)
    for name, p in model.named_parameters():
        if p.grad is not None and (name in tp.specs or tp.rank == 0):
            total += local_tensor(p.grad).double().pow(2).sum().cpu()
    dist.all_reduce(total, group=tp.group)
    if dp_group is not None:
        dist.all_reduce(total, group=dp_group)
    return total.sqrt()


@torch.no_grad()
def clip_grad_norm(model: nn.Module, tp: TensorParallel, max_norm: float, dp_group=None) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ for a TP-split model (DTensor and plain gradients mixed,
    which torch's version refuses). Scales the gradients in place; returns the norm before."""
    norm = grad_norm(model, tp, dp_group)
    scale = max_norm / (float(norm) + 1e-6)
    if scale < 1.0:
        for p in model.parameters():
            if p.grad is not None:
                local_tensor(p.grad).mul_(scale)
    return norm


# -- inference ------------------------------------------------------------------------------------
def local_config(cfg: ModelConfig, tp: int) -> ModelConfig:
    """The config of one rank's slice: its cache holds n_kv_heads / tp KV heads and the Mamba heads
    and groups / tp (the same shapes the split layers compute with)."""
    import dataclasses

    check_tensor_parallel(cfg, tp)
    return dataclasses.replace(cfg, n_heads=cfg.n_heads // tp, n_kv_heads=cfg.n_kv_heads // tp,
                               mamba_n_heads=cfg.mamba_n_heads // tp, mamba_n_groups=cfg.mamba_n_groups // tp)


def parallelize_for_inference(model: nn.Module, tp_mesh) -> TensorParallel:
    """`parallelize_tensor` for generation: also gives the model a `new_cache` sized for its slice,
    so `generate`, beam search and speculative decoding run unchanged on every rank (each rank runs
    the same loop on replicated logits, so all pick the same tokens). Mutates the model."""
    from ..cache import Cache

    tp = parallelize_tensor(model, tp_mesh)
    cfg = local_config(model.config, tp.size)

    def new_cache(batch_size: int, **kwargs) -> Cache:
        return Cache(cfg, batch_size, dtype=model.dtype, device=model.device, **kwargs)

    model.new_cache = new_cache  # the instance's cache now matches its split layers
    return tp
