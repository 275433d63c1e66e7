"""Images in: read with Pillow, resized and normalised as the ViT expects; or precomputed features.

`load_image` -> a float32 tensor (C, H, W). `load_features` reads visual features another encoder
computed, from a safetensors file (no pickle): a tensor named "features" of shape (P, d_vision).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .config import VisionConfig

FEATURE_SUFFIXES = (".safetensors",)


def preprocess(image, cfg: VisionConfig) -> torch.Tensor:
    """A PIL image -> (C, H, W) float32: RGB, resized to image_size square (bicubic, as CLIP's
    processor), scaled to [0, 1], then (x - mean) / std per channel."""
    from PIL import Image

    image = image.convert("RGB" if cfg.channels == 3 else "L")
    if image.size != (cfg.image_size, cfg.image_size):
        image = image.resize((cfg.image_size, cfg.image_size), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)  # (C, H, W)
    mean = torch.tensor(cfg.mean).view(-1, 1, 1)
    std = torch.tensor(cfg.std).view(-1, 1, 1)
    return (x - mean) / std


def load_image(path: str | os.PathLike, cfg: VisionConfig) -> torch.Tensor:
    """An image file (anything Pillow reads) -> (C, H, W) float32 (see `preprocess`)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return preprocess(image, cfg)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:  # Pillow raises SyntaxError on some corrupt files
        raise ValueError(f"cannot read {path} as an image: {e}") from None


def check_visual(path: str | os.PathLike) -> None:
    """Raise FileNotFoundError / ValueError now if `path` cannot be read as an image or features
    file, before anything slow (loading a model) happens."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file {path}")
    if str(path).lower().endswith(FEATURE_SUFFIXES):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"cannot read {path} as safetensors features: {e}") from None
        return
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read {path} as an image: {e}") from None


def load_features(path: str | os.PathLike, cfg: VisionConfig) -> torch.Tensor:
    """Precomputed visual features from a safetensors file -> (P, d_vision) float32."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no features file {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} as safetensors features: {e}") from None
    features = tensors.get("features")
    if features is None or features.ndim != 2 or features.shape[1] != cfg.d_vision:
        shape = None if features is None else tuple(features.shape)
        raise ValueError(f"{path}: expected a tensor 'features' of shape (P, {cfg.d_vision}), found {shape}")
    return features.float()


def load_visual(path: str | os.PathLike, cfg: VisionConfig) -> torch.Tensor:
    """An image file -> pixels (C, H, W), or a .safetensors file -> features (P, d_vision)."""
    if str(path).lower().endswith(FEATURE_SUFFIXES):
        return load_features(path, cfg)
    return load_image(path, cfg)
