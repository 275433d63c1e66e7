"""GGUF -> HF checkpoint directory: dequantized weights, config.json and the tokenizer files."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .atomic import atomic_dir
from .errors import CheckpointError


def convert_gguf_to_hf(source: str, out_dir: str | os.PathLike, dtype: torch.dtype = torch.float32,
                       overwrite: bool = False) -> Path:
    """Write `source` (a .gguf path or registry name) as an HF directory at `out_dir`, atomically."""
    from .gguf import load_gguf
    from .hf import hf_arch_for, save_hf_checkpoint
    from .registry import resolve_gguf

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{out_dir} exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise CheckpointError(f"{out_dir} exists and is not empty (use --overwrite to replace it)")
    model, tokenizer = load_gguf(resolve_gguf(source), dtype=dtype)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        save_hf_checkpoint(model, tmp, hf_arch_for(model.config))  # tmp is empty, so this is allowed
        tokenizer.to_hf_files(tmp)
    return out_dir
