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


def convert_to_gguf(source: str, out_file: str | os.PathLike, quant: str | None = None, overwrite: bool = False):
    """Write `source` (a registry name, .gguf, HF directory or `hybridlm quantize` directory) as a
    llama.cpp GGUF file at `out_file`, atomically; see gguf_write.py for `quant`. A GGUF source's
    tokenizer metadata is copied as is. Returns the GGUFWriteSummary."""
    from .gguf_write import WRITE_TYPES, gguf_metadata_fields, write_gguf
    from .registry import load_model

    out_file = Path(out_file)
    if quant is not None and quant not in WRITE_TYPES:
        raise CheckpointError(f"unknown GGUF type {quant!r}; known: {', '.join(WRITE_TYPES)}")
    if out_file.is_dir() or (out_file.exists() and not overwrite):
        raise CheckpointError(f"{out_file} exists (use --overwrite to replace it)")
    loaded = load_model(source, dtype=torch.float32)  # a GGUF is dequantized; a quantized dir keeps its codes
    fields = gguf_metadata_fields(loaded.source) if loaded.format == "gguf" else None
    return write_gguf(loaded.model, loaded.tokenizer, out_file, quant, name=loaded.name, tokenizer_fields=fields,
                      overwrite=overwrite)
