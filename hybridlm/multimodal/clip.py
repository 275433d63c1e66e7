"""A CLIP-style dual encoder (Radford et al. 2021) for pre-training the image encoder.

The image tower is the ViT of vision-language models (vit.py); the text tower is hybridlm's
`Encoder` (models/encoder.py). Each output is mean-pooled, projected to a shared width and L2
normalised; `train.objectives.clip_loss` pulls matching pairs together. After pre-training,
`vision` is what a VisionLanguageModel loads as its image encoder (`load_state_dict`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..models.encoder import Encoder, pool
from .config import VisionConfig
from .vit import VisionEncoder


class ClipModel(nn.Module):
    def __init__(self, text_config: ModelConfig, vision_config: VisionConfig, d_embed: int = 64):
        super().__init__()
        self.config = text_config  # the trainer reads the text tower's sizes (vocab, context)
        self.vision_config = vision_config
        self.vision = VisionEncoder(vision_config)
        self.text = Encoder(text_config)
        self.image_proj = nn.Linear(vision_config.d_vision, d_embed, bias=False)
        self.text_proj = nn.Linear(text_config.d_model, d_embed, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> unit vectors (B, d_embed)."""
        return F.normalize(self.image_proj(self.vision(pixels).mean(dim=1)), dim=-1)

    def embed_texts(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) right-padded ids, mask 1 = token -> unit vectors (B, d_embed)."""
        return F.normalize(self.text_proj(pool(self.text.encode(ids, mask), mask)), dim=-1)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None):
        """-> (image vectors, text vectors, logit scale): what `clip_loss` takes."""
        return self.embed_images(pixels), self.embed_texts(ids, mask), self.logit_scale
