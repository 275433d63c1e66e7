"""Stage 3, de-duplication across all sources: exact (a hash of the normalized text) then near
(MinHash + LSH, minhash.py). The first document of a duplicate group, in input order, is kept.

Normalization for the exact pass: Unicode NFKC, case folding, every run of whitespace as one space.
So a copy re-wrapped, re-indented or in other capitals is an exact duplicate.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable

import numpy as np

from .documents import Document, StageReport, progress
from .minhash import MinHashConfig, MinHasher, near_duplicate_groups

_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def exact_key(text: str) -> bytes:
    """16-byte BLAKE2b digest of the normalized text."""
    return hashlib.blake2b(normalize(text).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def exact_dedup(docs: Iterable[Document], show_progress: bool = False) -> tuple[list[Document], StageReport]:
    """Drop documents whose normalized text equals an earlier one's (reason: exact_duplicate)."""
    report, seen, kept = StageReport("exact_dedup"), set(), []
    docs = list(docs)
    for doc in progress(docs, "exact dedup", show_progress, total=len(docs)):
        key = exact_key(doc.text)
        if key in seen:
            report.remove(doc.source, "exact_duplicate")
        else:
            seen.add(key)
            report.keep(doc)
            kept.append(doc)
    return kept, report


def near_dedup(docs: Iterable[Document], config: MinHashConfig,
               show_progress: bool = False) -> tuple[list[Document], StageReport]:
    """Drop documents whose estimated shingle Jaccard with an earlier kept one reaches config.threshold
    (reason: near_duplicate)."""
    docs = list(docs)
    hasher = MinHasher(config)
    signatures = np.stack([hasher.signature(d.text) for d in progress(docs, "near dedup", show_progress,
                                                                        total=len(docs))]) \
        if docs else np.zeros((0, config.num_perm), dtype=np.uint32)  # (N, K)
    groups, bands, rows = near_duplicate_groups(signatures, config)
    report, kept = StageReport("near_dedup"), []
    for i, doc in enumerate(docs):
        if groups[i] == i:
            report.keep(doc)
            kept.append(doc)
        else:
            report.remove(doc.source, "near_duplicate")
    duplicated_groups = set(groups[groups != np.arange(len(docs))].tolist())
    report.info = {"threshold": config.threshold, "num_perm": config.num_perm, "shingle": config.shingle,
                   "bands": bands, "rows": rows, "clusters_with_duplicates": len(duplicated_groups)}
    return kept, report
