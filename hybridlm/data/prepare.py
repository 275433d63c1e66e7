"""`prepare`: raw sources -> a token-shard dataset (shards.py), stage by stage.

    extract -> filters -> exact_dedup -> near_dedup -> decontaminate -> split -> mix -> tokenize

Decontamination runs before mixing (the issue lists it after) so that the mix weights hold for what
is written; the split runs before mixing so that a repeated document stays on one side. Each stage
reports what it kept and removed; the reports go to stderr and into the manifest.

The output directory holds the shards and manifest.json, plus
    documents.jsonl   the curated documents before mixing, {"text", "source", "origin", "split"}
                      (what `hybridlm tokenizer train DIR` trains on: the train split)
    tokenizer/        the tokenizer the ids belong to (tokenizer.json, tokenizer_config.json)
It is written into a temporary sibling and renamed at the end: an interrupted or failed run leaves
nothing. Memory stays bounded: the corpus streams through curation in partitions (streaming.py),
the texts wait in a spill file beside the output and only small per-document records (store.DocRef,
keys, band keys) stay in memory; `in_memory=True` runs the list-based stages on the whole corpus
in memory instead, the reference the streaming path is tested against.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..checkpoints.atomic import atomic_dir, atomic_file
from ..tokenizer import Tokenizer
from .decontam import DecontamConfig, EvalNgrams, decontaminate
from .dedup import exact_dedup, near_dedup
from .default_corpus import default_sources
from .documents import DataError, Document, StageReport, log, progress
from .extract import extract
from .filters import FilterConfig, quality_filter
from .minhash import MinHashConfig
from .mix import MixConfig, mix
from .shards import read_manifest, token_dtype, write_manifest, write_split
from .sources import DEFAULT_EXTENSIONS, ReadOptions, Source, parse_inputs
from .split import split_documents
from .store import DiskStore, DocRef, IdStore, MemoryStore
from .streaming import curate_streaming
from .tokenization import encode_documents, resolve_tokenizer, separator_id

if TYPE_CHECKING:  # importing the options here would import nothing of Ray, but keep the door one-way
    from .ray_engine import RayOptions  # noqa: F401

DOCUMENTS = "documents.jsonl"
TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class PrepareConfig:
    inputs: tuple[str, ...] = ()  # PATH or NAME=PATH: folders, text/HTML files, .jsonl, .parquet
    default_corpus: bool = False  # add the default corpus (prose: pydoc topics, code: the standard library)
    tokenizer: str = "smollm2-135m"  # tokenizer.json path, HF directory, .gguf file or registry name
    text_field: str = "text"  # JSONL/parquet field holding the text
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS  # file suffixes a folder walk reads
    max_docs: int | None = None  # documents read from each source at most (None = all)
    filters: FilterConfig | None = field(default_factory=FilterConfig)  # None = no quality filtering
    exact_dedup: bool = True  # drop exact duplicates after normalization
    near_dedup: MinHashConfig | None = field(default_factory=MinHashConfig)  # None = no near-duplicate pass
    decontam: DecontamConfig = field(default_factory=DecontamConfig)  # evaluation files to keep out
    mix: MixConfig = field(default_factory=MixConfig)  # per-source weights of the output
    val_fraction: float = 0.05  # share of each source's documents held out for validation
    seed: int = 0  # the split, the mix sample and the output order
    shard_tokens: int = 2**26  # token ids per shard file at most
    show_progress: bool = True  # progress bars and stage summaries on stderr

    def __post_init__(self):
        if not self.inputs and not self.default_corpus:
            raise DataError("nothing to prepare: give input paths or --default")
        if self.max_docs is not None and self.max_docs < 1:
            raise DataError(f"--max-docs must be at least 1, got {self.max_docs}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.shard_tokens < 1:
            raise DataError(f"shard_tokens must be at least 1, got {self.shard_tokens}")


def gather_sources(config: PrepareConfig) -> list[Source]:
    """The named sources of a config (inputs checked to exist); a name used twice is an error."""
    options = ReadOptions(text_field=config.text_field, extensions=config.extensions, max_docs=config.max_docs)
    sources = (default_sources(config.max_docs) if config.default_corpus else []) + parse_inputs(
        list(config.inputs), options)
    names = [s.name for s in sources]
    for name in names:
        if names.count(name) > 1:
            raise DataError(f"two sources are named {name!r}; name inputs with NAME=PATH")
    return sources


def _records(sources: list[Source]) -> Iterator:
    for source in sources:
        yield from source.read()


def curate(config: PrepareConfig, sources: list[Source]) -> tuple[list[Document], list[StageReport]]:
    """Extraction, filters, de-duplication and decontamination: the documents worth training on."""
    show, reports = config.show_progress, []

    def record(result):
        docs, report = result
        reports.append(report)
        log(report.summary(), show)
        return docs

    index = EvalNgrams.from_files(config.decontam.files, config.decontam.n) if config.decontam.files else None
    docs = record(extract(_records(sources), show))
    if config.filters is not None:
        docs = record(quality_filter(docs, config.filters, show))
    if config.exact_dedup:
        docs = record(exact_dedup(docs, show))
    if config.near_dedup is not None:
        docs = record(near_dedup(docs, config.near_dedup, show))
    if index is not None:
        docs = record(decontaminate(docs, index, config.decontam.min_shared, show))
    return docs, reports


def _write_documents(path: Path, store, splits: dict[str, list[DocRef]]) -> None:
    with atomic_file(path, "w") as f:
        for split, refs in splits.items():
            for d in store.read(r.index for r in refs):
                f.write(json.dumps({"text": d.text, "source": d.source, "origin": d.origin, "split": split},
                                   ensure_ascii=False) + "\n")


def _token_stream(refs: list[DocRef], ids: IdStore, sep: int | None, dtype: np.dtype,
                  digest: Any, per_source: dict[str, int]) -> Iterator[np.ndarray]:
    """Each document's ids with the separator after it, hashed into `digest` as they pass."""
    tail = np.array([sep] if sep is not None else [], dtype=np.uint32)
    for ref in refs:
        arr = np.concatenate([ids[ref.index], tail])
        per_source[ref.source] = per_source.get(ref.source, 0) + arr.size
        digest.update(arr.astype(dtype).tobytes())
        yield arr


def _encode_into(ids: IdStore, store, indices: np.ndarray, tokenizer: Tokenizer, show: bool, engine,
                 batch: int = 512) -> None:
    """Encode each document of `indices` (distinct, increasing) once, here or by `engine`'s workers,
    texts streamed from the store a batch at a time."""
    def batches():
        for start in range(0, len(indices), batch):
            chunk = indices[start:start + batch].tolist()
            yield chunk, [d.text for d in store.read(chunk)]

    if engine is not None:
        encoded = engine.encode_batches(batches(), tokenizer)
    else:
        encoded = ((chunk, encode_documents(texts, tokenizer)) for chunk, texts in batches())
    for chunk, arrays in progress(encoded, "tokenize", show, total=-(-len(indices) // batch), unit="batch"):
        for index, arr in zip(chunk, arrays):
            ids.append(index, arr)


def _mix_splits(splits: dict[str, list[DocRef]], config: MixConfig, names: list[str],
                show: bool) -> tuple[dict[str, list[DocRef]], StageReport]:
    """Mix each split; the report counts unique documents kept or left out, its info what was achieved."""
    report, mixed, achieved = StageReport("mix"), {}, {}
    for split, docs in splits.items():
        # a small validation split may lack a source: its weight is spread over the others there
        mixed[split], achieved[split] = mix(docs, config, names, split, report, strict=split == "train") \
            if docs else ([], {})
    report.info = {"weights": dict(config.weights) or None, "total": config.total,
                   "documents_out": {s: len(d) for s, d in mixed.items()}, "achieved": achieved}
    log(report.summary(), show)
    for split, sources in achieved.items():
        shares = ", ".join(f"{s} {a['share']:.1%} ({a['documents']:,} documents, {a['epochs']:.2f} epochs)"
                           for s, a in sources.items())
        log(f"  {split}: {shares}", show and bool(shares))
    return mixed, report


def _write_tokens(tmp: Path, spill: Path, store, mixed: dict[str, list[DocRef]], tokenizer: Tokenizer,
                  tok_info: dict[str, Any], shard_tokens: int, show: bool, engine=None) -> dict[str, Any]:
    """Encode each distinct document once (here, or by `engine`'s workers), write the splits' shards;
    the manifest fields they give."""
    sep = separator_id(tokenizer)
    unique = np.unique(np.fromiter((r.index for refs in mixed.values() for r in refs), dtype=np.int64))
    ids = IdStore(spill / "ids.u32")
    _encode_into(ids, store, unique, tokenizer, show, engine)
    dtype, digest = token_dtype(tokenizer.vocab_size), hashlib.sha256()
    digest.update(json.dumps([str(dtype), tokenizer.vocab_size, sep, tok_info["sha256"]]).encode())
    splits, tokens_by_source = {}, {}
    for split, docs in mixed.items():
        tokens_by_source[split] = {}
        digest.update(split.encode())
        stream = _token_stream(docs, ids, sep, dtype, digest, tokens_by_source[split])
        splits[split] = write_split(tmp, split, stream, tokenizer.vocab_size, shard_tokens)
    ids.close()
    log(f"tokenize: {splits['train']['tokens']:,} train and {splits['val']['tokens']:,} validation tokens "
        f"({dtype.name})", show)
    if tokenizer.eos_token is None and sep is not None:  # so the saved tokenizer names the separator as eos
        tokenizer = Tokenizer(tokenizer.backend, bos_token=tokenizer.bos_token, eos_token=tokenizer.id_to_token(sep),
                              pad_token=tokenizer.pad_token, unk_token=tokenizer.unk_token, add_bos=tokenizer.add_bos,
                              chat_template=tokenizer.chat_template)
    tokenizer.to_hf_files(tmp / TOKENIZER_DIR)
    return {"dtype": dtype.name, "vocab_size": tokenizer.vocab_size, "eos_token_id": sep, "splits": splits,
            "content_hash": "sha256:" + digest.hexdigest(), "version": digest.hexdigest()[:12],
            "tokens_by_source": tokens_by_source, "tokenizer": {**tok_info, "files": TOKENIZER_DIR}}


def _config_record(config: PrepareConfig) -> dict[str, Any]:
    record = asdict(config)
    record.pop("show_progress")
    return record


def prepare(out: str | os.PathLike, config: PrepareConfig, overwrite: bool = False,
            ray: "RayOptions | None" = None, in_memory: bool = False) -> dict[str, Any]:
    """Build the dataset directory `out` (see the module docstring); returns its manifest.

    An existing non-empty `out` is an error unless `overwrite`; nothing is written on failure.
    ray: run curation and tokenization as Ray tasks (ray_engine.py); the output is the same.
    in_memory: the reference path (the corpus in memory, list-based stages); the output is the same."""
    start, show = time.perf_counter(), config.show_progress
    if Path(out).exists() and not Path(out).is_dir():
        raise DataError(f"--out {out} is a file, not a directory")
    sources = gather_sources(config)
    names = [s.name for s in sources]
    config.mix.shares(names)  # unknown or missing --mix names fail before any work
    tokenizer, tok_info = resolve_tokenizer(config.tokenizer)
    with contextlib.ExitStack() as stack:
        engine = None
        if ray is not None:
            from .ray_engine import RayEngine

            engine = stack.enter_context(RayEngine(ray, show))
        manifest = _prepare_into(out, config, sources, tokenizer, tok_info, overwrite, engine, in_memory)
    log(f"wrote {out} (version {manifest['version']}) in {time.perf_counter() - start:.1f} s", show)
    return read_manifest(out)


def _prepare_into(out, config: PrepareConfig, sources: list[Source], tokenizer: Tokenizer, tok_info: dict,
                  overwrite: bool, engine, in_memory: bool = False) -> dict[str, Any]:
    show, names = config.show_progress, [s.name for s in sources]
    parent = Path(out).resolve().parent  # the spill files go beside the output, on its disk (not a RAM /tmp)
    parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out, overwrite=overwrite) as tmp, \
            tempfile.TemporaryDirectory(prefix=".hybridlm-spill-", dir=parent) as spill_dir:
        spill = Path(spill_dir)
        store = MemoryStore() if in_memory else DiskStore(spill / "documents.jsonl")
        if engine is not None:
            refs, reports = engine.curate(config, _records(sources), store)
        elif in_memory:
            docs, reports = curate(config, sources)
            refs = [store.append(d) for d in docs]
        else:
            refs, reports = curate_streaming(config, _records(sources), store, show)
        if not refs:
            raise DataError("no documents left after curation (see the stage counts above)")
        train, val, split_report = split_documents(refs, config.val_fraction, config.seed)
        reports.append(split_report)
        log(f"split: {len(train):,} train and {len(val):,} validation documents", show)
        _write_documents(tmp / DOCUMENTS, store, {"train": train, "val": val})
        mixed, mix_report = _mix_splits({"train": train, "val": val}, config.mix, names, show)
        reports.append(mix_report)
        manifest = _write_tokens(tmp, spill, store, mixed, tokenizer, tok_info, config.shard_tokens, show, engine)
        store.close()
        manifest |= {
            "sources": {s.name: {"inputs": s.inputs} for s in sources},
            "weights": {s: a["target_share"] for s, a in mix_report.info["achieved"]["train"].items()},
            "stages": [r.as_dict() for r in reports],
            "documents": DOCUMENTS,
            "config": _config_record(config),
        }
        write_manifest(tmp, manifest)
    return manifest
