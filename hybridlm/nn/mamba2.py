"""The Mamba-2 mixer (Dao & Gu 2024, Sec. 7 "The Mamba-2 architecture"), as mamba_ssm and
transformers' Mamba2 / Nemotron-H build it:

    x (B, T, d_model) --in_proj--> z | xBC | dt
    xBC --depthwise causal conv (width d_conv) + SiLU--> x (H heads of P), B and C (G groups of N)
    dt  --+ dt_bias, softplus, clamp to the dt limits-->  step sizes (B, T, H)
    y = SSD(x, dt, A = -exp(A_log), B, C) + D x       (the scan: nn/ssd.py)
    y = RMSNorm_grouped(y * silu(z)) * w               (norm after the gate, per group of d_inner/G)
    out_proj(y)

Two entry points, as mamba_ssm has them: `forward` runs T tokens (training, prefill, chunked
prefill) with the chunked scan and leaves the conv and SSM state in the cache slot; `step` runs one
token from the slot (decoding). Padding (left, from the attention mask) is made invisible: padded
positions feed zeros into the conv and have dt = 0, so the state passes them unchanged.

A slot that is `keeping` (speculative decoding: cache.keep_states) is also handed every token's conv
input and SSM state, so the cache can roll the state back to any of them. The per-token states come
from `ssd_scan_states`, written out by the scan itself rather than recomputed after acceptance: the
state at the last accepted token is then exactly the one the verification used, and going back is a
lookup. The price is T states per Mamba layer during the forward (T = k + 1 tokens verified).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..kernels import triton_support
from .ssd import ssd_scan_chunked, ssd_scan_ref, ssd_scan_states, ssd_step


class GatedRMSNorm(nn.Module):
    """y = w * rmsnorm(x * silu(z)) with the RMS taken over groups of `group_size` channels
    (norm_before_gate=False, as in mamba_ssm's RMSNormGated and Nemotron-H)."""

    def __init__(self, dim: int, group_size: int, eps: float):
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype, inner = x.dtype, torch.promote_types(x.dtype, torch.float32)
        h = x.to(inner) * F.silu(z.to(inner))  # float32 at least: bf16 sums of squares drift
        groups = h.view(*h.shape[:-1], -1, self.group_size)
        h = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)).view(h.shape)
        return self.weight * h.to(dtype)


class Mamba2(nn.Module):
    """The Mamba-2 mixer. Parameters keep mamba_ssm's names: in_proj (rows [z; x; B; C; dt]),
    conv1d (depthwise, weight (conv_dim, 1, d_conv)), dt_bias, A_log, D (per head), norm, out_proj."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim, self.d_state = cfg.mamba_n_heads, cfg.mamba_head_dim, cfg.d_state
        self.n_groups, self.d_conv, self.chunk_size = cfg.mamba_n_groups, cfg.d_conv, cfg.mamba_chunk_size
        self.d_inner, self.conv_dim = cfg.mamba_d_inner, cfg.mamba_conv_dim
        self.dt_limit = cfg.mamba_dt_limit
        self.ssd_impl = cfg.ssd_impl
        self.in_proj = nn.Linear(cfg.d_model, self.d_inner + self.conv_dim + self.n_heads, bias=cfg.mamba_proj_bias)
        # padding=0: the left context comes from the cache slot (zeros at the start), never implicit
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim,
                                bias=cfg.mamba_conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // self.n_groups, cfg.norm_eps)
        self.out_proj = nn.Linear(self.d_inner, cfg.d_model, bias=cfg.mamba_proj_bias)
        self.reset_ssm_parameters(cfg)

    @torch.no_grad()
    def reset_ssm_parameters(self, cfg: ModelConfig) -> None:
        """mamba_ssm's initialisation: A uniform in [1, 16], D = 1, and dt_bias the inverse softplus
        of dt drawn log-uniformly from [dt_min, dt_max] (at least dt_init_floor)."""
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1.0, 16.0).log())
        self.D.fill_(1.0)
        lo, hi = math.log(cfg.mamba_dt_min), math.log(cfg.mamba_dt_max)
        dt = torch.exp(torch.rand_like(self.dt_bias) * (hi - lo) + lo).clamp(min=cfg.mamba_dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _split(self, zxbcdt: torch.Tensor):
        return zxbcdt.split((self.d_inner, self.conv_dim, self.n_heads), dim=-1)

    def _ssm_inputs(self, xbc: torch.Tensor, dt: torch.Tensor):
        """Post-conv xBC (..., conv_dim) and raw dt (..., H) -> x (..., H, P), B, C (..., G, N), dt, A."""
        x, b, c = xbc.split((self.d_inner, self.n_groups * self.d_state, self.n_groups * self.d_state), dim=-1)
        shape, inner = xbc.shape[:-1], torch.promote_types(xbc.dtype, torch.float32)
        dt = F.softplus(dt.to(inner) + self.dt_bias.to(inner)).clamp(min=self.dt_limit[0], max=self.dt_limit[1])
        a = -torch.exp(self.A_log.to(inner))
        return (x.reshape(*shape, self.n_heads, self.head_dim), b.reshape(*shape, self.n_groups, self.d_state),
                c.reshape(*shape, self.n_groups, self.d_state), dt, a)

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """y (..., H, P) from the scan -> D skip, gated norm, out_proj -> (..., d_model)."""
        y = y + x.to(y.dtype) * self.D.to(y.dtype)[:, None]
        y = self.norm(y.reshape(*y.shape[:-2], self.d_inner), z)  # still float32, as transformers has it
        return self.out_proj(y.to(dtype))

    def _triton_scan(self, x: torch.Tensor, B: torch.Tensor) -> bool:
        """Whether the Triton SSD kernels take this call: CUDA, the [triton] extra, supported sizes."""
        if not triton_support.use_triton(x) or x.dtype == torch.float64:
            return False
        from ..kernels.ssd_triton import supported

        return supported(x, B, self.chunk_size) is None

    def forward(self, hidden: torch.Tensor, slot=None, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Prefill: hidden (B, T, d_model) -> (B, T, d_model).

        slot: a cache `MambaSlot` whose conv and SSM state are the left context (zeros when fresh)
            and are overwritten with the state after these T tokens; None for training.
        valid (B, T) bool: False at (left) padding, which then leaves both states untouched.
        """
        b, t, _ = hidden.shape
        z, xbc, dt = self._split(self.in_proj(hidden))
        if valid is not None:
            xbc = xbc * valid[..., None].to(xbc.dtype)
        xbc = xbc.transpose(1, 2)  # (B, conv_dim, T)
        if slot is None:
            left = xbc.new_zeros(b, self.conv_dim, self.d_conv - 1)
        else:
            left = slot.conv.to(xbc.dtype)
        window = torch.cat((left, xbc), dim=2)  # (B, conv_dim, d_conv - 1 + T)
        if slot is not None:
            slot.conv.copy_(window[:, :, window.shape[2] - (self.d_conv - 1):])
        xbc = F.silu(F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim))
        x, B, C, dt, A = self._ssm_inputs(xbc.transpose(1, 2), dt)
        if valid is not None:  # dt = 0: decay exp(0) = 1 and no input, the state passes unchanged
            dt = dt * valid[..., None]
        initial = None if slot is None else slot.ssm
        if slot is not None and slot.keeping:
            y, states = ssd_scan_states(x, dt, A, B, C, initial)
            slot.keep(window[:, :, self.d_conv - 1:], states)
            final = states[:, -1]
        elif self.ssd_impl == "ref":
            y, final = ssd_scan_ref(x, dt, A, B, C, initial)
        elif self._triton_scan(x, B):  # CUDA: the Triton chunked scan (kernels/ssd_triton.py)
            from ..kernels.ssd_triton import ssd_scan_triton

            y, final = ssd_scan_triton(x, dt, A, B, C, self.chunk_size, initial)
        else:
            y, final = ssd_scan_chunked(x, dt, A, B, C, self.chunk_size, initial)
        if slot is not None:
            slot.ssm.copy_(final)
        return self._output(y, x, z, hidden.dtype)

    def forward_packed(self, hidden: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """Training on packed rows: hidden (B, T, d_model), segments (B, T) ids of the examples (equal
        ids contiguous) -> (B, T, d_model). Each example runs alone from a zero state, so neither the
        conv window nor the SSM state carries one example into the next."""
        rows = []
        for b in range(hidden.shape[0]):
            cut = (segments[b, 1:] != segments[b, :-1]).nonzero().flatten().add(1).tolist()
            bounds = [0, *cut, hidden.shape[1]]
            rows.append(torch.cat([self.forward(hidden[b:b + 1, s:e]) for s, e in zip(bounds, bounds[1:])], dim=1))
        return torch.cat(rows)

    def step(self, hidden: torch.Tensor, slot) -> torch.Tensor:
        """Decode one token: hidden (B, 1, d_model) -> (B, 1, d_model); advances `slot` in place."""
        z, xbc, dt = self._split(self.in_proj(hidden[:, 0]))
        window = torch.cat((slot.conv.to(xbc.dtype), xbc[:, :, None]), dim=2)  # (B, conv_dim, d_conv)
        slot.conv.copy_(window[:, :, 1:])
        xbc = (window * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            xbc = xbc + self.conv1d.bias
        x, B, C, dt, A = self._ssm_inputs(F.silu(xbc), dt)
        if self.ssd_impl != "ref" and self._triton_scan(x, B):
            from ..kernels.ssd_triton import ssd_step_triton

            y, state = ssd_step_triton(slot.ssm, x, dt, A, B, C)
        else:
            y, state = ssd_step(slot.ssm, x, dt, A, B, C)
        if slot.keeping:
            slot.keep(window[:, :, -1:], state[:, None])
        slot.ssm.copy_(state)
        return self._output(y, x, z, hidden.dtype)[:, None]
