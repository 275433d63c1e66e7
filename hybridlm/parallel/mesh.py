"""The layout of a run: how many ways each parallel dimension splits, and its `DeviceMesh`.

    world = pp x dp x tp          (ranks laid out with tp fastest: a TP group is neighbouring ranks,
                                   which on GPUs means one node's NVLink)

`Layout` is plain data shared by the trainer, the CLI and the cost model (analysis/parallel.py);
`build_mesh` is the only place a mesh is made. Nothing here touches the process group until
`build_mesh` is called inside an entry point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DIM_NAMES = ("pp", "dp", "tp")


@dataclass(frozen=True)
class Layout:
    tp: int = 1  # tensor-parallel ranks: each holds 1/tp of every matmul (attention and Mamba by heads)
    pp: int = 1  # pipeline stages: each holds a contiguous run of blocks
    dp: int = 1  # data-parallel replicas (DDP, or FSDP2 shards) of the (tp x pp) model

    def __post_init__(self):
        for name in ("tp", "pp", "dp"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def model_parallel(self) -> int:
        """Ranks one copy of the model is spread over."""
        return self.tp * self.pp

    @classmethod
    def for_world(cls, world_size: int, tp: int = 1, pp: int = 1) -> "Layout":
        """The layout with the data-parallel size filling the rest of `world_size`."""
        if tp < 1 or pp < 1:
            raise ValueError(f"--tp and --pp must be at least 1, got {tp} and {pp}")
        if world_size % (tp * pp):
            raise ValueError(f"{world_size} ranks do not split into --tp {tp} x --pp {pp} "
                             f"(the world size must be a multiple of {tp * pp})")
        return cls(tp=tp, pp=pp, dp=world_size // (tp * pp))

    def describe(self) -> str:
        return f"tp {self.tp} x pp {self.pp} x dp {self.dp} = {self.world_size} ranks"


def build_mesh(layout: Layout, device: torch.device):
    """The 3-D DeviceMesh ("pp", "dp", "tp") over the initialised process group. Collective."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (layout.pp, layout.dp, layout.tp), mesh_dim_names=DIM_NAMES)
