"""`VisionConfig`: the vision side of a vision-language model (the LM keeps its own `ModelConfig`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, ModelConfig

DESIGNS = ("flamingo", "tokens")  # gated cross-attention, or visual tokens as input (PaLM-E/LLaVA)
PROJECTORS = ("linear", "mlp")
XATTN_IMAGES = ("preceding", "last")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's per-channel normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VisionConfig:
    design: str = "flamingo"  # one of DESIGNS
    image_token_id: int = 0  # the LM token that marks where an image goes in the prompt
    # the ViT (its blocks are hybridlm's encoder blocks: attention + MLP, bidirectional)
    image_size: int = 32  # images are resized to image_size x image_size pixels
    patch_size: int = 8  # square patches; (image_size / patch_size)^2 patch tokens per image
    channels: int = 3  # RGB
    d_vision: int = 64  # the ViT's residual width
    n_layers: int = 2  # ViT layers (attention + MLP)
    n_heads: int = 4  # ViT attention heads
    d_ff: int = 128  # ViT MLP hidden width
    mean: tuple[float, float, float] = CLIP_MEAN  # per-channel mean subtracted from pixels in [0, 1]
    std: tuple[float, float, float] = CLIP_STD  # per-channel std the centred pixels are divided by
    # flamingo
    n_latents: int = 8  # visual tokens per image out of the Perceiver Resampler (its learned queries)
    resampler_layers: int = 1  # Perceiver Resampler layers
    cross_every: int = 2  # a gated cross-attention layer before block 0, cross_every, 2 x cross_every, ...
    xattn_images: str = "preceding"  # text attends to every image before it, or only the last one (Flamingo)
    # tokens
    projector: str = "mlp"  # linear, or LLaVA-1.5's 2-layer MLP (GELU)

    def __post_init__(self) -> None:
        self.mean, self.std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
        checks = [
            (self.design in DESIGNS, f"design must be one of {DESIGNS}, not {self.design!r}"),
            (self.projector in PROJECTORS, f"projector must be one of {PROJECTORS}, not {self.projector!r}"),
            (self.xattn_images in XATTN_IMAGES, f"xattn_images must be one of {XATTN_IMAGES}"),
            (min(self.image_size, self.patch_size, self.channels, self.d_vision, self.n_heads, self.d_ff,
                 self.n_latents, self.cross_every, self.n_layers) > 0 and self.resampler_layers >= 0,
             "vision sizes must be positive"),
            (self.image_size % self.patch_size == 0, f"image_size {self.image_size} is not a multiple of "
                                                     f"patch_size {self.patch_size}"),
            (self.d_vision % self.n_heads == 0, f"d_vision {self.d_vision} is not divisible by n_heads {self.n_heads}"),
            (len(self.mean) == self.channels and len(self.std) == self.channels and min(self.std) > 0,
             "mean and std need one value per channel (std > 0)"),
            (self.image_token_id >= 0, "image_token_id must be a token id"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens_per_image(self) -> int:
        """Placeholder tokens one image takes in the prompt: its visual tokens (tokens design), or
        one `<image>` marker (flamingo, which reads the image through cross-attention)."""
        return self.n_patches if self.design == "tokens" else 1

    def vit_config(self) -> ModelConfig:
        """The ViT as an encoder `ModelConfig`: pre-norm LayerNorm blocks, GELU MLPs, no token
        positions (the ViT adds its own learned patch positions)."""
        return ModelConfig(vocab_size=1, d_model=self.d_vision, n_heads=self.n_heads, d_ff=self.d_ff,
                           layer_pattern="*-" * self.n_layers,
                           max_seq_len=self.n_patches, position="none", mlp="gelu", norm="layernorm",
                           norm_eps=1e-6, family="encoder", qkv_bias=True, attn_out_bias=True, mlp_bias=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VisionConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown VisionConfig fields {unknown}")
        return cls(**data)
