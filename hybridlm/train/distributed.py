"""Data parallelism on torchrun: DDP, or FSDP2 (`fully_shard`) with `fsdp=True`.

torchrun (never a launcher of ours) starts one process per device and sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `setup` reads them. Without them the run is one process
and the model is used as is (FSDP on one process still shards over a world of one, so the same
code path is exercised). CUDA ranks use NCCL and device cuda:LOCAL_RANK; CPU ranks use gloo.

With `tp`, `pp`, `cp` or `ep` > 1 the world is a mesh (parallel/mesh.py). Under --tp each model
copy is split over `tp` ranks (parallel/tensor.py) and FSDP2 runs over the remaining data-parallel
dimension (see `_wrap_split`), so 2D layouts are one command. Under --cp every rank holds the whole
model and a chunk of each sequence; DDP or FSDP2 spans the dp x cp ranks (`replica_mesh`), whose
average of the chunks' mean losses is the sequence's mean. Under --pp and --ep the ranks hold
different parameters and model_parallel.py reduces the gradients by hand. Every rank of a TP, CP
or PP group reads the same micro-batches (`dp_rank`).

Checkpoints are consolidated: `full_state` gathers full (unsharded) model and optimizer state
dicts on rank 0, keyed by parameter name, whatever the wrapping; `load_full_state` takes the same
dicts on every rank and shards them again, so a run saved by FSDP resumes under DDP or alone.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ..device import resolve_device
from ..parallel.mesh import Layout, build_mesh


@dataclass
class DistContext:
    rank: int  # this process among all (0 = the one that writes)
    world_size: int  # processes in the run
    local_rank: int  # this process on its node (picks the CUDA device)
    device: torch.device  # where this rank's model lives
    fsdp: bool  # parameters are sharded with FSDP2
    owns_group: bool  # this process created the process group and destroys it in `teardown`
    layout: Layout = Layout()  # how the world splits: tp x pp x dp x cp (and ep over dp)
    mesh: object = None  # the DeviceMesh ("pp", "dp", "cp", "tp") when the model is split, else None
    replica_mesh: object = None  # the 1-D mesh DDP/FSDP2 span under a mesh: dp, or dp x cp flattened
    tp: object = None  # parallel.tensor.TensorParallel once `wrap` has split the model

    @property
    def reduces_by_hand(self) -> bool:
        """Stage or expert-split ranks: gradients reduced by model_parallel.py, not DDP or FSDP2."""
        return self.layout.pp > 1 or self.layout.ep > 1

    @property
    def dp_rank(self) -> int:
        """This rank's data-parallel replica: which slice of every global batch it reads."""
        return self.mesh["dp"].get_local_rank() if self.mesh is not None else self.rank

    @property
    def dp_size(self) -> int:
        return self.layout.dp if self.mesh is not None else self.world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, values: list[float]) -> list[float]:
        """Average of each value over ranks (every rank gets the result)."""
        return [v / self.world_size for v in self.sum(values)]

    def sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()


def setup(device: str = "auto", fsdp: bool = False, tp: int = 1, pp: int = 1, cp: int = 1,
          ep: int = 1) -> DistContext:
    """Join the torchrun process group when there is one (else a world of one), and build the mesh
    for model parallelism. Mutates the global torch.distributed state and, on CUDA, the current
    device. Raises ValueError before joining anything when the world does not split as asked."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    layout = Layout.for_world(world, tp=tp, pp=pp, cp=cp, ep=ep)
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if launched else (dev.index or 0))
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized() and (launched or fsdp):
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if launched:
            dist.init_process_group(backend, device_id=dev if dev.type == "cuda" else None)
        else:  # FSDP needs a process group even alone: a world of one over an in-memory store
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    mesh = replicas = None
    if layout.needs_mesh:
        mesh = build_mesh(layout, dev)
        replicas = mesh["dp", "cp"]._flatten("dp_cp") if layout.cp > 1 else mesh["dp"]
    return DistContext(rank, world, local_rank, dev, fsdp, owns, layout, mesh, replicas)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: DistContext, find_unused: bool = False) -> nn.Module:
    """DDP or FSDP2 around `model` (already on ctx.device); the model itself with one plain process.

    FSDP2 shards each block, then the root (embeddings, final norm, head), so one block's full
    parameters exist at a time. find_unused: DDP must expect parameters without gradients (MoE
    experts no token was routed to). With ctx.layout.tp > 1 the model is split first (sets ctx.tp)
    and FSDP2 spans the mesh's data-parallel dimension only. With --pp this rank's stage comes back
    (a StageModule), with --ep the model holding this rank's experts: both unwrapped."""
    if ctx.layout.pp > 1:
        from ..parallel.pipeline import build_stage

        return build_stage(model, ctx.mesh["pp"])
    if ctx.layout.ep > 1:
        from ..parallel.expert import parallelize_experts

        parallelize_experts(model, ctx.mesh["dp"])
        return model
    if ctx.layout.tp > 1:
        return _wrap_split(model, ctx, find_unused)
    mesh = ctx.replica_mesh  # None without a mesh: the whole world
    if ctx.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model, "blocks", []):
            fully_shard(block, mesh=mesh)
        return fully_shard(model, mesh=mesh)
    if ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        group = mesh.get_group() if mesh is not None else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused, process_group=group)
    return model


def _wrap_split(model: nn.Module, ctx: DistContext, find_unused: bool) -> nn.Module:
    """Split over the TP group; replicas over the dp dimension always use FSDP2 here, because torch's
    DDP swaps DTensor parameters for local tensors around each step (the optimizer and the state
    dict would lose them). Without --fsdp the parameters stay gathered after the forward (ZeRO-2:
    a reduce-scatter plus an all-gather per step, the bytes of DDP's all-reduce)."""
    from ..parallel.tensor import parallelize_tensor

    ctx.tp = parallelize_tensor(model, ctx.mesh["tp"])
    if ctx.replica_mesh.size() == 1:
        return model
    from torch.distributed.fsdp import fully_shard

    dp_mesh = ctx.replica_mesh
    for block in model.blocks:
        fully_shard(block, mesh=dp_mesh, reshard_after_forward=ctx.fsdp)
    return fully_shard(model, mesh=dp_mesh, reshard_after_forward=ctx.fsdp)


def clip_grad_norm(model: nn.Module, ctx: DistContext, max_norm: float) -> float:
    """Clip the global gradient norm to max_norm (inf: measure only); returns the norm before."""
    if ctx.reduces_by_hand:
        from .model_parallel import clip_gradients

        return clip_gradients(model, ctx, max_norm)
    if ctx.tp is not None:
        from ..parallel.tensor import clip_grad_norm as clip_split

        replicas = ctx.replica_mesh
        dp_group = replicas.get_group() if replicas.size() > 1 else None  # FSDP2-sharded gradients
        return float(clip_split(unwrap(model), ctx.tp, max_norm, dp_group))
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor


def unwrap(model: nn.Module) -> nn.Module:
    """The Decoder inside a DDP wrapper (FSDP2 modifies the module in place, so it is itself)."""
    return getattr(model, "module", model)


def finish_gradients(model: nn.Module, ctx: DistContext) -> None:
    """After the step's last backward: the hand-made all-reduce of stage or expert-split ranks
    (DDP and FSDP2 have reduced during the backward already). Mutates the gradients."""
    if ctx.reduces_by_hand:
        from .model_parallel import reduce_gradients

        reduce_gradients(model, ctx)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool):
    """Inside, backward passes communicate gradients only when `enabled`: accumulation micro-steps
    but the last skip the all-reduce (DDP `no_sync`) or the reduce-scatter (FSDP2)."""
    if enabled:
        yield
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def _options(ctx: DistContext, **kwargs) -> StateDictOptions:
    return StateDictOptions(full_state_dict=True, cpu_offload=ctx.distributed, **kwargs)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict), full and on the CPU on rank 0 ({} elsewhere when
    distributed). The optimizer's state is keyed by parameter name. A collective: every rank calls it."""
    if ctx.reduces_by_hand:
        from .model_parallel import gather_state

        return gather_state(model, optimizer, ctx)
    if ctx.tp is not None:
        return _split_full_state(unwrap(model), optimizer, ctx)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(ctx))
    if ctx.is_main:
        model_sd = {k: v.detach().cpu() for k, v in model_sd.items()}
    return model_sd, optim_sd


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict,
                    ctx: DistContext, strict: bool = True) -> None:
    """Load full state dicts (as `full_state` returns on rank 0, given on every rank) into a wrapped
    or plain model and its optimizer; FSDP shards them. strict=False: model_sd may hold only some
    parameters (a fine-tuning checkpoint of adapters). Mutates model and optimizer."""
    if ctx.reduces_by_hand:
        from .model_parallel import load_state

        return load_state(model, optimizer, model_sd, optim_sd)
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=StateDictOptions(full_state_dict=True, strict=strict))


def _split_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext) -> tuple[dict, dict]:
    """`full_state` of a TP-split model: canonical tensors, in get_state_dict's layout."""
    from ..parallel.tensor import full_tensor

    names = _optimizer_names(model, optimizer)
    model_sd = {n: full_tensor(ctx.tp, n, t.detach()).cpu() for n, t in model.state_dict().items()}
    state = {}
    for p, s in optimizer.state.items():
        name = names[id(p)]
        state[name] = {k: (v.cpu() if k == "step" else full_tensor(ctx.tp, name, v).cpu()) for k, v in s.items()}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
              for g in optimizer.param_groups]
    if not ctx.is_main:
        return {}, {}
    return model_sd, {"state": state, "param_groups": groups}


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list:
    return [p for g in optimizer.param_groups for p in g["params"]]


def _optimizer_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, str]:
    """id(optimizer parameter) -> parameter name, by the order `build_optimizer` listed them. Not by
    looking the objects up in the model: FSDP2 without resharding leaves other (unsharded)
    parameter objects registered on the module after an evaluation forward."""
    from .optim import decay_groups

    decay, no_decay = decay_groups(model)
    params = _optimizer_params(optimizer)
    if len(params) != len(decay) + len(no_decay):
        raise RuntimeError("the optimizer's parameters do not match the model's decay groups")
    return {id(p): n for p, n in zip(params, decay + no_decay)}
