"""The layout of a run: how many ways each parallel dimension splits, and its `DeviceMesh`.

    world = pp x dp x cp x tp     (ranks laid out with tp fastest: a TP group is neighbouring ranks,
                                   which on GPUs means one node's NVLink; then the context-parallel
                                   ranks that share a sequence)

Expert parallelism has no dimension of its own: as in DeepSpeed-MoE and torchtitan, the experts are
spread over data-parallel ranks (each with its own tokens), and here over all of them (ep == dp).

`Layout` is plain data shared by the trainer, the CLI and the cost model (analysis/parallel.py);
`build_mesh` is the only place a mesh is made. Nothing here touches the process group until
`build_mesh` is called inside an entry point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DIM_NAMES = ("pp", "dp", "cp", "tp")


@dataclass(frozen=True)
class Layout:
    tp: int = 1  # tensor-parallel ranks: each holds 1/tp of every matmul (attention and Mamba by heads)
    pp: int = 1  # pipeline stages: each holds a contiguous run of blocks
    dp: int = 1  # data-parallel replicas (DDP, or FSDP2 shards) of the (tp x pp) model
    cp: int = 1  # context-parallel ranks: each holds 1/cp of every sequence (parameters replicated)
    ep: int = 1  # expert-parallel ranks: each holds n_experts / ep experts; 1 or dp (the dp ranks)

    def __post_init__(self):
        for name in ("tp", "pp", "dp", "cp", "ep"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")

        if self.ep not in (1, self.dp):
            raise ValueError(f"--ep {self.ep} must equal the data-parallel size {self.dp} (world / (tp x pp x cp)): "
                             "the experts are spread over every data-parallel rank")

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    @property
    def needs_mesh(self) -> bool:
        """Anything but plain data parallelism: the trainer builds the mesh and splits the model."""
        return self.tp * self.pp * self.cp * self.ep > 1

    @property
    def model_parallel(self) -> int:
        """Ranks one copy of the model is spread over."""
        return self.tp * self.pp

    @classmethod
    def for_world(cls, world_size: int, tp: int = 1, pp: int = 1, cp: int = 1, ep: int = 1) -> "Layout":
        """The layout with the data-parallel size filling the rest of `world_size`."""
        if min(tp, pp, cp, ep) < 1:
            raise ValueError(f"--tp, --pp, --cp and --ep must be at least 1, got {tp}, {pp}, {cp} and {ep}")
        if world_size % (tp * pp * cp):
            raise ValueError(f"{world_size} ranks do not split into --tp {tp} x --pp {pp} x --cp {cp} "
                             f"(the world size must be a multiple of {tp * pp * cp})")
        return cls(tp=tp, pp=pp, dp=world_size // (tp * pp * cp), cp=cp, ep=ep)

    def describe(self) -> str:
        ep = f" (ep {self.ep} over dp)" if self.ep > 1 else ""
        return f"tp {self.tp} x pp {self.pp} x dp {self.dp} x cp {self.cp} = {self.world_size} ranks{ep}"


def build_mesh(layout: Layout, device: torch.device):
    """The 4-D DeviceMesh ("pp", "dp", "cp", "tp") over the initialised process group. Collective."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (layout.pp, layout.dp, layout.cp, layout.tp), mesh_dim_names=DIM_NAMES)
