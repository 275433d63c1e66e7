"""The end of a run: its model as an HF checkpoint directory that `hybridlm generate` and
`transformers` load, with the dataset's tokenizer beside it when the dataset names one."""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoints.errors import CheckpointError
from ..models.decoder import Decoder
from ..tokenizer import Tokenizer


def dataset_tokenizer(data_dir: str | os.PathLike, manifest: dict) -> Tokenizer | None:
    """The tokenizer a dataset was made with, or None when it names none.

    Looks at, in order: manifest["tokenizer"] as a path (absolute, or relative to the dataset; a
    tokenizer.json or an HF directory), as a registry name or GGUF file, or as an object with one
    of those under "files" (what `hybridlm data prepare` writes), "path", "file", "name" or "spec";
    then a tokenizer.json inside the dataset directory.
    """
    data_dir = Path(data_dir)
    named = manifest.get("tokenizer")
    if isinstance(named, dict):
        # `hybridlm data prepare` copies the tokenizer into the dataset ("files") and records its source
        named = next((named[k] for k in ("files", "path", "file", "name", "spec") if isinstance(named.get(k), str)), None)
    if isinstance(named, str) and named:
        for candidate in (data_dir / named, Path(named)):
            if (candidate.is_file() and candidate.suffix == ".json") or (candidate / "tokenizer.json").is_file():
                return Tokenizer.from_file(candidate)
        from ..checkpoints.gguf import read_gguf_tokenizer
        from ..checkpoints.registry import resolve_gguf

        try:
            return read_gguf_tokenizer(resolve_gguf(named))
        except CheckpointError:
            pass
    if (data_dir / "tokenizer.json").is_file():
        return Tokenizer.from_file(data_dir)
    return None


def export_hf(model: Decoder, out: str | os.PathLike, tokenizer: Tokenizer | None) -> str | None:
    """Write `model` (plain, unwrapped, CPU or not) to `out` as the HF architecture its config maps
    to, with tokenizer files. Returns the architecture, or None (and writes nothing) when the config
    has no HF equivalent (e.g. ALiBi positions); the training checkpoints still hold the weights."""
    from ..checkpoints import hf_bert, hf_t5
    from ..checkpoints.hf import hf_arch_for, save_hf_checkpoint

    family = getattr(model.config, "family", "decoder")
    try:  # encoders are written as BERT, encoder-decoders as T5, when their layout allows
        if family == "encoder":
            hf_bert.config_to_hf(model.config)  # raises when the layout has no HF equivalent
            arch = "bert"
        elif family == "seq2seq":
            hf_t5.config_to_hf(model.config)
            arch = "t5"
        else:
            arch = hf_arch_for(model.config)
    except CheckpointError:
        return None
    if family == "encoder":
        hf_bert.save_bert(model, out, overwrite=True)
    elif family == "seq2seq":
        hf_t5.save_t5(model, out, overwrite=True)
    else:
        save_hf_checkpoint(model, out, arch, overwrite=True)
    if tokenizer is not None:
        tokenizer.to_hf_files(out)
    return arch
