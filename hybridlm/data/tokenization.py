"""Stage 6's first half: the tokenizer a dataset is prepared with, and documents -> token id arrays.

Special-token text inside a document (a source file that mentions "<|endoftext|>") is encoded as
plain text: only the separator this module appends may end a document in the shards.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..tokenizer import Tokenizer
from .documents import progress

# the end-of-document token of a tokenizer that names no eos (a bare tokenizer.json from `tokenizer train`)
FALLBACK_SEPARATOR = "<|endoftext|>"


def resolve_tokenizer(spec: str) -> tuple[Tokenizer, dict[str, Any]]:
    """A tokenizer from a tokenizer.json file, an HF directory, a .gguf file or a registry name, and
    how to describe it in a manifest."""
    path = Path(spec)
    if path.is_file() and path.suffix == ".json" or path.is_dir() and (path / "tokenizer.json").is_file():
        tokenizer, kind, where = Tokenizer.from_file(path), "tokenizer.json", path
    else:
        # imported here: the registry pulls in torch and the model code
        from ..checkpoints.gguf import read_gguf_tokenizer
        from ..checkpoints.registry import resolve

        _, where, fmt = resolve(spec)
        if fmt == "gguf":
            tokenizer, kind = read_gguf_tokenizer(where), "gguf"
        else:
            tokenizer, kind = Tokenizer.from_file(where), "tokenizer.json"
    fingerprint = hashlib.sha256(tokenizer.backend.to_str().encode()).hexdigest()
    sep = separator_id(tokenizer)
    info = {"spec": spec, "path": str(Path(where).resolve()), "kind": kind, "vocab_size": tokenizer.vocab_size,
            "separator": tokenizer.id_to_token(sep) if sep is not None else None, "sha256": fingerprint}
    return tokenizer, info


def separator_id(tokenizer: Tokenizer) -> int | None:
    """The id appended after each document: the tokenizer's eos, else <|endoftext|> if it has one."""
    if tokenizer.eos_token_ids:
        return tokenizer.eos_token_ids[0]
    return tokenizer.token_to_id(FALLBACK_SEPARATOR)


def encode_documents(texts: list[str], tokenizer: Tokenizer, batch_size: int = 64,
                     show_progress: bool = False) -> list[np.ndarray]:
    """One (T_doc,) uint32 id array per text, without BOS or separator."""
    backend, out = tokenizer.backend, []
    # encode_batch_fast (tokenizers >= 0.20) skips character offsets: the same ids in half the time
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    saved = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        starts = range(0, len(texts), batch_size)
        for start in progress(starts, "tokenize", show_progress, total=len(starts), unit="batch"):
            for encoding in encode(texts[start:start + batch_size], add_special_tokens=False):
                out.append(np.array(encoding.ids, dtype=np.uint32))
    finally:
        backend.encode_special_tokens = saved
    return out
