"""Curation with bounded memory: the corpus streams through partitions, and only fixed-size numbers
per document stay in memory until the decisions are made.

    per partition (`partition_docs` raw records): extract, quality filters, then for every survivor
        text, source, origin      -> the store (store.py: a spill file on disk)
        exact key (16 bytes)      -> in memory
        MinHash signature         -> a spill file of uint32 rows (read back only for candidate pairs)
        LSH band keys (8 B/band)  -> in memory
        contamination verdict     -> in memory (one byte)
    then, over the whole corpus: exact dedup (first of each key), near dedup (LSH buckets of the
    exact survivors, candidates verified on their signatures, clustered), decontamination

The decisions are those of the list-based stages (dedup.py, decontam.py; `prepare.curate` runs them
as the in-memory reference), in the same order, with the same reports. The Ray engine reaches them
through its shuffles and shares `account` (the reports) with this file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .dedup import exact_key
from .documents import StageReport, log, merge_reports, progress
from .extract import extract
from .filters import quality_filter
from .minhash import MinHasher, band_keys, candidate_pairs_of_keys, cluster_pairs, lsh_bands
from .store import DocRef, read_rows

PARTITION_DOCS = 2000  # raw records per partition: the text in memory at once is about this many documents


def partitions(records: Iterator, size: int) -> Iterator[list]:
    batch = []
    for raw in records:
        batch.append(raw)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class SignatureRows:
    """(N, K) uint32 signatures appended to a file; rows read back by positioned reads, through a list
    of row numbers (`rows(subset)`), so `cluster_pairs` reads only the candidates' rows."""

    def __init__(self, path: Path, num_perm: int):
        self.path, self.num_perm, self.count = path, num_perm, 0
        self._out = path.open("wb")
        self._fd = None

    def append(self, signatures: np.ndarray) -> None:
        self._out.write(np.ascontiguousarray(signatures, dtype=np.uint32).tobytes())
        self.count += len(signatures)

    def rows(self, subset: np.ndarray) -> "_Rows":
        if self._fd is None:
            self._out.close()
            self._fd = os.open(self.path, os.O_RDONLY)
        return _Rows(self, subset)

    def row(self, i: int) -> np.ndarray:
        return read_rows(self._fd, int(i), 1, np.uint32, self.num_perm)[0]

    def close(self) -> None:
        self._out.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _Rows:
    def __init__(self, table: SignatureRows, subset: np.ndarray):
        self.table, self.subset = table, subset

    def __len__(self) -> int:
        return len(self.subset)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.table.row(self.subset[i])


def account(stage: str, refs: list[DocRef], alive: np.ndarray, before: np.ndarray, reason: str) -> StageReport:
    """The report of a removal stage over the documents `before` marks, keeping those `alive` marks."""
    report = StageReport(stage)
    for ref, was, kept in zip(refs, before, alive):
        if was:
            if kept:
                report.keep(ref)
            else:
                report.remove(ref.source, reason)
    return report


def near_verdicts(keys: np.ndarray, signatures, before: np.ndarray, config, pairs=None) -> tuple[np.ndarray, dict]:
    """Keep-mask (N,) of the near-dedup pass over the documents `before` marks, and the report's info.
    keys: (N, bands) band keys (or None when `pairs` over the survivors' positions are given, as the
    Ray shuffle finds them); signatures: SignatureRows of all N documents."""
    bands, rows = lsh_bands(config.threshold, config.num_perm)
    survivors = np.flatnonzero(before)
    if pairs is None:
        pairs = candidate_pairs_of_keys(keys[survivors])
    groups = cluster_pairs(signatures.rows(survivors), pairs, config.threshold)
    keep_pos = groups == np.arange(len(survivors))
    keep = np.ones(len(before), dtype=bool)
    keep[survivors[~keep_pos]] = False
    info = {"threshold": config.threshold, "num_perm": config.num_perm, "shingle": config.shingle, "bands": bands,
            "rows": rows, "clusters_with_duplicates": len(set(groups[~keep_pos].tolist()))}
    return keep, info


def decontaminate(refs: list[DocRef], alive: np.ndarray, dirty: bytearray, index) -> StageReport:
    """Drop (in `alive`, in place) the documents whose verdict byte in `dirty` says they share an
    n-gram with the evaluation sets of `index` (an EvalNgrams); the stage's report."""
    before = alive.copy()
    alive &= ~np.frombuffer(bytes(dirty), dtype=bool)
    report = account("decontaminate", refs, alive, before, "contaminated")
    report.info = {"n": index.n, "eval_documents": index.documents,
                   "eval_documents_too_short": int(index.too_short), "eval_ngrams": int(index.hashes.size)}
    return report


def curate_streaming(config, records: Iterator, store, show: bool,
                     partition_docs: int = PARTITION_DOCS) -> tuple[list[DocRef], list[StageReport]]:
    """`prepare.curate` over partitions (see the module docstring): the kept documents' refs, in
    corpus order, and the stage reports. Every text extracted and filtered goes into `store`."""
    from .decontam import EvalNgrams

    index = EvalNgrams.from_files(config.decontam.files, config.decontam.n) if config.decontam.files else None
    near = config.near_dedup
    hasher = MinHasher(near) if near is not None else None
    bands, rows = lsh_bands(near.threshold, near.num_perm) if near is not None else (0, 0)
    refs: list[DocRef] = []
    keys, band_parts, dirty, extracts, filters = bytearray(), [], bytearray(), [], []
    with tempfile.TemporaryDirectory(prefix="hybridlm-signatures-") as tmp:
        signatures = SignatureRows(Path(tmp) / "signatures.u32", near.num_perm if near else 1)
        for part in progress(partitions(records, partition_docs), "curate", show, unit="part"):
            docs, report = extract(part)
            extracts.append(report)
            if config.filters is not None:
                docs, report = quality_filter(docs, config.filters)
                filters.append(report)
            for doc in docs:
                refs.append(store.append(doc))
                keys += exact_key(doc.text)
                dirty.append(bool(index is not None and index.hashes.size
                                  and index.shared(doc.text) >= config.decontam.min_shared))
            if hasher is not None and docs:
                sigs = np.stack([hasher.signature(d.text) for d in docs])  # (n, K)
                signatures.append(sigs)
                band_parts.append(band_keys(sigs, bands, rows))
        reports = [merge_reports(extracts, "extract")]
        if config.filters is not None:
            reports.append(merge_reports(filters, "filters"))
        alive = np.ones(len(refs), dtype=bool)
        if config.exact_dedup:
            first = np.unique(np.frombuffer(bytes(keys), dtype="V16"), return_index=True)[1] if refs else []
            alive = np.zeros(len(refs), dtype=bool)
            alive[first] = True
            reports.append(account("exact_dedup", refs, alive, np.ones(len(refs), bool), "exact_duplicate"))
        if near is not None:
            before = alive.copy()
            all_keys = np.concatenate(band_parts) if band_parts else np.zeros((0, bands), np.uint64)
            keep, info = near_verdicts(all_keys, signatures, before, near)
            alive &= keep
            reports.append(account("near_dedup", refs, alive, before, "near_duplicate"))
            reports[-1].info = info
        if index is not None:
            reports.append(decontaminate(refs, alive, dirty, index))
        signatures.close()
    for report in reports:
        log(report.summary(), show)
    return [r for r, a in zip(refs, alive) if a], reports
