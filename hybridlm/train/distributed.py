"""Data parallelism on torchrun: DDP, or FSDP2 (`fully_shard`) with `fsdp=True`.

torchrun (never a launcher of ours) starts one process per device and sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `setup` reads them. Without them the run is one process
and the model is used as is (FSDP on one process still shards over a world of one, so the same
code path is exercised). CUDA ranks use NCCL and device cuda:LOCAL_RANK; CPU ranks use gloo.

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


@dataclass
class DistContext:
    rank: int  # this process among all (0 = the one that writes)
    world_size: int  # processes in the run
    local_rank: int  # this process on its node (picks the CUDA device)
    device: torch.device  # where this rank's model lives
    fsdp: bool  # parameters are sharded with FSDP2
    owns_group: bool  # this process created the process group and destroys it in `teardown`

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


def setup(device: str = "auto", fsdp: bool = False) -> DistContext:
    """Join the torchrun process group when there is one (else a world of one). Mutates the global
    torch.distributed state and, on CUDA, the current device."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
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
    return DistContext(rank, world, local_rank, dev, fsdp, owns)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: DistContext, find_unused: bool = False) -> nn.Module:
    """DDP or FSDP2 around `model` (already on ctx.device); the model itself with one plain process.

    FSDP2 shards each block, then the root (embeddings, final norm, head), so one block's full
    parameters exist at a time. find_unused: DDP must expect parameters without gradients (MoE
    experts no token was routed to)."""
    if ctx.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model, "blocks", []):
            fully_shard(block)
        return fully_shard(model)
    if ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The Decoder inside a DDP wrapper (FSDP2 modifies the module in place, so it is itself)."""
    return getattr(model, "module", model)


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
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(ctx))
    if ctx.is_main:
        model_sd = {k: v.detach().cpu() for k, v in model_sd.items()}
    return model_sd, optim_sd


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict,
                    ctx: DistContext, strict: bool = True) -> None:
    """Load full state dicts (as `full_state` returns on rank 0, given on every rank) into a wrapped
    or plain model and its optimizer; FSDP shards them. strict=False: model_sd may hold only some
    parameters (a fine-tuning checkpoint of adapters). Mutates model and optimizer."""
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=StateDictOptions(full_state_dict=True, strict=strict))
