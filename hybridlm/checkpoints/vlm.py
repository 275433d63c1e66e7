"""Vision-language model checkpoints (multimodal/): a directory with the LM and the vision parts.

    vlm.json           {"format": "hybridlm-vlm", "lm": ModelConfig, "vision": VisionConfig}
    model.safetensors  every weight: decoder.* (the LM), vision.*, resampler.* and xattn.*
                       (flamingo) or projector.* (tokens); tied matrices stored once
    tokenizer.json, tokenizer_config.json   the tokenizer, with "<image>" as a special token

Written atomically (a temporary directory renamed into place). Loading reads safetensors only:
no pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..config import ModelConfig
from ..tokenizer import Tokenizer
from .atomic import atomic_dir
from .errors import CheckpointError

FORMAT = "hybridlm-vlm"
MARKER = "vlm.json"


def is_vlm_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MARKER).is_file()


def save_vlm(model, tokenizer: Tokenizer, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `model` (a VisionLanguageModel) and its tokenizer to out_dir (see the module doc)."""
    from safetensors.torch import save_model

    image_token = tokenizer.id_to_token(model.vision_config.image_token_id)
    if image_token is None:
        raise ValueError(f"the tokenizer has no token {model.vision_config.image_token_id} (the image placeholder)")
    meta = {"format": FORMAT, "lm": model.config.to_dict(), "vision": model.vision_config.to_dict(),
            "image_token": image_token}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        save_model(model, str(tmp / "model.safetensors"))  # shared (tied) tensors once
        tokenizer.to_hf_files(tmp)
        (tmp / MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)


def read_vlm_configs(path: str | os.PathLike):
    """(ModelConfig of the LM, VisionConfig) from a VLM directory."""
    from ..multimodal.config import VisionConfig

    try:
        meta = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {Path(path) / MARKER}: {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: {MARKER} is not a {FORMAT} file (format {meta.get('format')!r})")
    return ModelConfig.from_dict(meta["lm"]), VisionConfig.from_dict(meta["vision"])


def load_vlm(path: str | os.PathLike, dtype: torch.dtype | None = None, device="cpu"):
    """(VisionLanguageModel in eval mode, Tokenizer) from a directory `save_vlm` wrote."""
    from safetensors.torch import load_model

    from ..multimodal.model import VisionLanguageModel

    path = Path(path)
    lm_cfg, vision_cfg = read_vlm_configs(path)
    model = VisionLanguageModel(lm_cfg, vision_cfg)
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except (OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"cannot load {path / 'model.safetensors'}: {e}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config (missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]})")
    tokenizer = Tokenizer.from_file(path)
    if tokenizer.id_to_token(vision_cfg.image_token_id) is None:
        raise CheckpointError(f"{path}: the tokenizer has no image placeholder token {vision_cfg.image_token_id}")
    return model.to(device=device, dtype=dtype or torch.float32).eval(), tokenizer
