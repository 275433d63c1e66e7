"""Token shards on disk: the one format between data preparation and training.

A prepared dataset is a directory:

    manifest.json            {"format": "hybridlm-shards-1", "dtype": "uint16" | "uint32",
                              "vocab_size": int, "eos_token_id": int | null,
                              "splits": {"train": {"files": [...], "tokens": int},
                                         "val": {"files": [...], "tokens": int}},
                              ...anything else the writer records (sources, stage counts,
                              tokenizer, content hash)}
    train_00000.bin, ...     flat little-endian token ids of that dtype, documents joined
    val_00000.bin, ...       (each document followed by eos_token_id when there is one)

uint16 is used when every id fits (vocab_size <= 65536), else uint32. Files are read with
numpy memory maps, so a dataset larger than memory trains fine.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterable

import numpy as np

from ..checkpoints.atomic import atomic_file

FORMAT = "hybridlm-shards-1"
MANIFEST = "manifest.json"


class ShardError(ValueError):
    """A dataset directory that is missing, incomplete or not in the shard format."""


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_split(out_dir: str | os.PathLike, split: str, token_arrays: Iterable[np.ndarray], vocab_size: int,
                shard_tokens: int = 2**26) -> dict:
    """Write the concatenated arrays as `split_00000.bin`, ... (each at most shard_tokens ids).
    Each file is written atomically, array by array as they come (nothing is buffered: memory does
    not grow with the shard size). Returns the manifest entry {"files": [...], "tokens": n}."""
    out_dir, dtype = Path(out_dir), token_dtype(vocab_size)
    files, total, held, shard = [], 0, 0, None  # shard: (its atomic_file context, the handle, its name)
    try:
        for arr in token_arrays:
            arr = np.asarray(arr)
            if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
                raise ShardError(f"token ids outside [0, {vocab_size}) in split {split!r}")
            while arr.size:
                if shard is None:
                    name, stack = f"{split}_{len(files):05d}.bin", contextlib.ExitStack()
                    shard = (stack, stack.enter_context(atomic_file(out_dir / name, "wb")), name)
                take = arr[: shard_tokens - held]
                take.astype(dtype).tofile(shard[1])
                held += take.size
                total += take.size
                arr = arr[take.size:]
                if held == shard_tokens:
                    shard[0].close()  # fsync and rename into place
                    files.append(shard[2])
                    shard, held = None, 0
        if shard is not None:
            shard[0].close()
            files.append(shard[2])
    except BaseException:
        if shard is not None:  # the half-written shard's temporary goes away
            shard[0].__exit__(*sys.exc_info())
        raise
    return {"files": files, "tokens": total}


def write_manifest(out_dir: str | os.PathLike, manifest: dict) -> None:
    """Write manifest.json last and atomically: a directory without one is not a dataset."""
    with atomic_file(Path(out_dir) / MANIFEST, "w") as f:
        json.dump({"format": FORMAT, **manifest}, f, indent=2, sort_keys=True)


def read_manifest(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{data_dir}: no {MANIFEST}; prepare a dataset with `hybridlm data prepare`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ShardError(f"{path}: invalid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


class TokenShards:
    """The tokens of one split as memory maps; `tokens` is one flat view when there is one file."""

    def __init__(self, data_dir: str | os.PathLike, split: str = "train"):
        self.manifest = read_manifest(data_dir)
        entry = self.manifest.get("splits", {}).get(split)
        if entry is None:
            raise ShardError(f"{data_dir}: no split {split!r} (has {sorted(self.manifest.get('splits', {}))})")
        dtype = np.dtype(self.manifest["dtype"])
        self.arrays = []
        for name in entry["files"]:
            path = Path(data_dir) / name
            if not path.is_file():
                raise ShardError(f"{path}: shard listed in the manifest is missing")
            self.arrays.append(np.memmap(path, dtype=dtype, mode="r"))
        self.n_tokens = sum(a.size for a in self.arrays)
        if self.n_tokens != entry["tokens"]:
            raise ShardError(f"{data_dir}: split {split!r} holds {self.n_tokens} tokens, manifest says {entry['tokens']}")
        self.vocab_size = int(self.manifest["vocab_size"])

    def __len__(self) -> int:
        return self.n_tokens

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) across file boundaries, as int64."""
        if start < 0 or start + length > self.n_tokens:
            raise IndexError(f"window [{start}, {start + length}) outside {self.n_tokens} tokens")
        out, offset = [], 0
        for arr in self.arrays:
            lo, hi = max(start - offset, 0), min(start + length - offset, arr.size)
            if lo < hi:
                out.append(np.asarray(arr[lo:hi], dtype=np.int64))
            offset += arr.size
        return np.concatenate(out)
