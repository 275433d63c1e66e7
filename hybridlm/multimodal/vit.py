"""The image encoder: a ViT (Dosovitskiy et al. 2021) built from hybridlm's encoder blocks.

Patches of patch_size^2 pixels are embedded by one linear map (a stride-patch convolution), learned
positions are added, and the blocks are `models/decoder.Block`s run bidirectionally, as
`models/encoder.Encoder` runs them: no second attention implementation.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.decoder import Block, _init_weights
from ..nn.attention import AttentionInputs
from ..nn.norms import make_norm
from .config import VisionConfig


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        block_cfg = cfg.vit_config()
        self.patch_embed = nn.Conv2d(cfg.channels, cfg.d_vision, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.n_patches, cfg.d_vision))
        self.blocks = nn.ModuleList(Block(kind, block_cfg) for kind in block_cfg.blocks)
        self.final_norm = make_norm(block_cfg)
        self.apply(_init_weights)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (N, C, H, W) float, normalised (image.preprocess) -> patch features (N, P, d_vision)."""
        cfg = self.config
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (cfg.channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"expected pixels (N, {cfg.channels}, {cfg.image_size}, {cfg.image_size}), "
                             f"got {tuple(pixels.shape)}")
        x = self.patch_embed(pixels.to(self.pos_embed.dtype)).flatten(2).transpose(1, 2)  # (N, P, d)
        x = x + self.pos_embed
        inputs = AttentionInputs(None, False)  # every patch sees every patch
        for block in self.blocks:
            x = block(x, inputs, None)
        return self.final_norm(x)
