"""Flamingo's gated cross-attention dense layer (Alayrac et al. 2022, figure 4):

    y = y + tanh(alpha_xattn) * xattn(norm(y), visual)
    y = y + tanh(alpha_dense) * ffw(norm(y))

alpha starts at 0, so at initialisation the layer is the identity and the frozen LM's output is
unchanged bit for bit (x + 0 * h == x for finite h). The attention is nn/cross_attention.py's.

Which visual tokens a text token may read is a mask built per image (`image_mask`): a token sees
the images whose placeholder comes at or before it (all of them, or only the last as in
Flamingo). A token before any image sees nothing: its attention output is set to zero, never NaN.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..nn.cross_attention import CrossAttention
from ..nn.mlp import MLP
from ..nn.norms import make_norm


def image_mask(images_before: torch.Tensor, key_image: torch.Tensor, only_last: bool) -> torch.Tensor:
    """Which visual tokens each text token may attend to.

    images_before (B, T) int64: images whose placeholder is at or before the token (0 = none yet);
    key_image (B, S) int64: the image (0-based) each visual token belongs to, -1 for padding.
    -> bool (B, 1, T, S).
    """
    seen = images_before[:, :, None]
    k = key_image[:, None, :]
    ok = (k >= 0) & (k < seen)
    if only_last:
        ok &= k == seen - 1
    return ok[:, None]


class GatedCrossAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_attn, self.norm_ff = make_norm(cfg), make_norm(cfg)
        self.attn = CrossAttention(cfg)
        self.ff = MLP(cfg)
        self.alpha_attn = nn.Parameter(torch.zeros(1))
        self.alpha_ff = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, d_model); kv from `self.attn.project_memory` (B, H_kv, S, D); mask bool
        (B, 1, T, S) from `image_mask` -> (B, T, d_model)."""
        sees = mask.any(dim=-1).transpose(1, 2)  # (B, T, 1): the token has an image to read
        # a row with no visible key would softmax to NaN: let it see everything, then zero it
        h = self.attn(self.norm_attn(x), kv, mask | ~sees.transpose(1, 2)[..., None])
        x = x + torch.tanh(self.alpha_attn) * h.masked_fill(~sees, 0.0)
        return x + torch.tanh(self.alpha_ff) * self.ff(self.norm_ff(x))
