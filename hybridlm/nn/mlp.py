"""Feed-forward blocks: the two-layer MLP and the GLU family (Shazeer 2020)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..kernels import triton_support

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),  # squared ReLU (So et al. 2021, Nemotron-H)
    "swiglu": F.silu,
    "geglu": lambda x: F.gelu(x, approximate="tanh"),
    "reglu": F.relu,
}


def is_glu(kind: str) -> bool:
    return kind.endswith("glu")


class MLP(nn.Module):
    """MLP: down(act(up(x))).  GLU: down(act(gate(x)) * up(x)), gate and up fused in one matmul."""

    def __init__(self, cfg: ModelConfig, d_ff: int | None = None):
        """d_ff: hidden width when not cfg.d_ff (MoE experts and shared experts have their own)."""
        super().__init__()
        self.kind = cfg.mlp
        self.d_ff = d_ff = d_ff or cfg.d_ff
        width = 2 * d_ff if is_glu(cfg.mlp) else d_ff
        # for GLU the fused weight holds [gate; up] along the output dimension
        self.w_in = nn.Linear(cfg.d_model, width, bias=cfg.mlp_bias)
        self.w_out = nn.Linear(d_ff, cfg.d_model, bias=cfg.mlp_bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.w_in(x)
        act = _ACTIVATIONS[self.kind]
        if self.kind == "swiglu" and triton_support.use_triton(h):  # one fused Triton pass on CUDA
            from ..kernels.fused_ops import swiglu_triton

            h = swiglu_triton(h)
        elif is_glu(self.kind):
            gate, up = h.split(self.d_ff, dim=-1)
            h = act(gate) * up
        else:
            h = act(h)
        return self.w_out(self.dropout(h))
