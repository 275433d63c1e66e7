"""Position information: RoPE (Su et al. 2021) with its scalings, ALiBi (Press et al. 2022),
sinusoidal (Vaswani et al. 2017) and learned absolute embeddings (GPT-2).

Positions are computed once per forward at the top of the model and handed to every layer.
"""

from __future__ import annotations

import math

import torch

from ..config import ModelConfig


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """theta_i = base^(-2i/D) for i < D/2, after the configured context-extension scaling. (D/2,)"""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if cfg.rope_scaling == "linear":
        # position interpolation (Chen et al. 2023): positions / factor == frequencies / factor
        return inv_freq / cfg.rope_factor
    if cfg.rope_scaling == "llama3":
        return _llama3_scaling(inv_freq, cfg)
    return inv_freq


def _llama3_scaling(inv_freq: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Llama 3.1: long wavelengths divided by the factor, short ones kept, a smooth ramp between."""
    old_len, factor = cfg.rope_original_max_seq_len, cfg.rope_factor
    low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
    """The tables `apply_rope` takes. positions (B, T) -> cos, sin (B, T, 1, D), broadcasting over heads.

    cos = (cos, cos) of position * theta; sin = (-sin, sin): the rotation's sign is folded in.
    """
    freqs = positions.float()[..., None] * inv_freq  # (B, T, D/2), float32 for long contexts
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((cos, cos), dim=-1).to(dtype)[:, :, None], torch.cat((-sin, sin), dim=-1).to(dtype)[:, :, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+D/2}) by the position angle (the 'rotate half' layout HF uses).

    x (B, T, H, D); cos, sin from `rope_cos_sin`. A roll and a multiply-add instead of slicing,
    negating and concatenating: a decode step is dominated by such per-op costs, not arithmetic.
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


def apply_rope_ref(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE as in the paper (Su et al. 2021, eq. 34), pairing x_i with x_{i+D/2}, in float32.

    x (B, T, H, D), positions (B, T), inv_freq (D/2,) -> (B, T, H, D) in x's dtype.
    """
    angle = positions.float()[..., None, None] * inv_freq  # (B, T, 1, D/2)
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = (x1 * angle.cos() - x2 * angle.sin(), x1 * angle.sin() + x2 * angle.cos())
    return torch.cat(rotated, dim=-1).to(x.dtype)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Head-specific slopes m_h, a geometric sequence starting at 2^(-8/n) (section 3 of the paper). (H,)"""

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_two_slopes(closest)
    if closest < n_heads:  # the paper's recipe for head counts that are not a power of two
        slopes += power_of_two_slopes(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def sinusoidal_embedding(positions: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same). positions (B, T) -> (B, T, dim)."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim))
    angles = positions.float()[..., None] * inv_freq
    pe = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
    return pe[..., :dim].to(dtype)
