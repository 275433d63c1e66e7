"""Training a byte-level BPE tokenizer on prepared or raw text (`hybridlm tokenizer train`).

Inputs are prepared datasets (their documents.jsonl, train split only, so validation text stays
unseen) or raw inputs read like `data prepare` reads them (extraction only: no filters or dedup).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from ..checkpoints.atomic import atomic_dir, atomic_file
from ..tokenizer import Tokenizer
from .default_corpus import default_sources
from .documents import DataError, log
from .extract import extract
from .prepare import DOCUMENTS
from .shards import MANIFEST
from .sources import ReadOptions, parse_inputs


def _prepared_texts(folder: Path, max_docs: int | None) -> Iterator[str]:
    taken = 0
    with open(folder / DOCUMENTS, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record.get("split", "train") == "train":
                if max_docs is not None and taken >= max_docs:
                    return
                taken += 1
                yield record["text"]


def training_texts(inputs: list[str], default_corpus: bool = False, text_field: str = "text",
                   max_docs: int | None = None) -> list[str]:
    """The texts of `inputs` (prepared dataset directories or raw paths) and, if asked, the default corpus."""
    if not inputs and not default_corpus:
        raise DataError("nothing to train on: give prepared dataset directories, input paths or --default")
    texts: list[str] = []
    raw: list[str] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir() and (path / MANIFEST).is_file():
            if not (path / DOCUMENTS).is_file():
                raise DataError(f"{path} is a dataset without {DOCUMENTS}; train on its raw inputs instead")
            texts += _prepared_texts(path, max_docs)
        else:
            raw.append(spec)
    options = ReadOptions(text_field=text_field, max_docs=max_docs)
    sources = (default_sources(max_docs) if default_corpus else []) + parse_inputs(raw, options)
    for source in sources:
        docs, _ = extract(source.read())
        texts += [d.text for d in docs]
    if not texts:
        raise DataError("the inputs hold no text to train a tokenizer on")
    return texts


def train_tokenizer(texts: list[str], vocab_size: int, out: str | os.PathLike, min_frequency: int = 2,
                    overwrite: bool = False, show_progress: bool = True) -> Tokenizer:
    """Train a byte-level BPE on `texts` and save it: `out` ending in .json is one tokenizer.json;
    anything else is a directory with tokenizer.json and tokenizer_config.json (which names eos).
    Written atomically; an existing output is an error unless `overwrite`."""
    out = Path(out)
    if out.suffix == ".json" and out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if vocab_size < 257:
        raise DataError(f"--vocab-size must be at least 257 (256 bytes and <|endoftext|>), got {vocab_size}")
    if min_frequency < 1:
        raise DataError(f"--min-frequency must be at least 1, got {min_frequency}")
    log(f"training a byte-level BPE with {vocab_size:,} tokens on {len(texts):,} documents "
        f"({sum(map(len, texts)) / 1e6:.1f} M characters)", show_progress)
    tokenizer = Tokenizer.train_bpe(texts, vocab_size, min_frequency=min_frequency, length=len(texts),
                                    show_progress=show_progress)
    if out.suffix == ".json":
        with atomic_file(out, "w") as f:
            f.write(tokenizer.backend.to_str())
    else:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            tokenizer.to_hf_files(tmp)
    log(f"wrote {out}: {tokenizer.vocab_size:,} tokens", show_progress)
    return tokenizer
