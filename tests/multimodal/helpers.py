"""Tiny vision-language models for the multimodal tests: built in milliseconds, random weights."""

import torch

from hybridlm.config import ModelConfig
from hybridlm.multimodal.config import VisionConfig
from hybridlm.multimodal.model import VisionLanguageModel

IMAGE_ID = 3
DECODERS = {"transformer": "*-*-", "hybrid": "M*M-"}


def lm_config(kind: str) -> ModelConfig:
    return ModelConfig(vocab_size=40, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, layer_pattern=DECODERS[kind],
                       max_seq_len=96, mamba_head_dim=16, d_state=8, mamba_chunk_size=8)


def vision_config(design: str, **changes) -> VisionConfig:
    base = dict(design=design, image_token_id=IMAGE_ID, image_size=16, patch_size=8, d_vision=32, n_heads=2,
                d_ff=32, n_latents=4, cross_every=1)
    return VisionConfig(**(base | changes))


def tiny_vlm(kind: str, design: str, seed: int = 0, open_gates: bool = True, **changes) -> VisionLanguageModel:
    """A tiny VLM in eval mode; open_gates sets every Flamingo gate to tanh^-1(0.5)-ish values so
    the images matter (at 0 they would not)."""
    torch.manual_seed(seed)
    model = VisionLanguageModel(lm_config(kind), vision_config(design, **changes)).eval()
    if open_gates and design == "flamingo":
        for layer in model.xattn:
            layer.alpha_attn.data.fill_(0.7)
            layer.alpha_ff.data.fill_(0.4)
    return model


def prompt(design_cfg: VisionConfig, pieces: list) -> torch.Tensor:
    """(1, T) ids from pieces: ints are text tokens, None is one image's placeholders."""
    ids = []
    for p in pieces:
        ids.extend([design_cfg.image_token_id] * design_cfg.tokens_per_image if p is None else [p])
    return torch.tensor([ids])
