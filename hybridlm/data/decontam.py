"""Stage 5, decontamination: drop training documents that share a long word n-gram with evaluation
data, as GPT-3 (Brown et al. 2020, appendix C) did with 13-grams.

Words are normalized (lower case, punctuation and spacing ignored; ngrams.normalized_words), so a
re-formatted copy of a test question still matches. Evaluation files are read like inputs (text,
HTML, JSONL, parquet, folders); in JSONL and parquet every string field counts (question, choices,
answer). An evaluation document shorter than n words has no n-gram and cannot match; such documents
are counted in the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .documents import DataError, Document, StageReport, progress
from .extract import extract
from .ngrams import WordHasher, ngram_hashes, normalized_words
from .sources import ReadOptions, read_paths


@dataclass(frozen=True)
class DecontamConfig:
    files: tuple[str, ...] = ()  # evaluation files or folders
    n: int = 13  # words per n-gram
    min_shared: int = 1  # a document sharing this many distinct n-grams with evaluation data is dropped

    def __post_init__(self):
        if self.n < 1 or self.min_shared < 1:
            raise DataError(f"decontamination needs n >= 1 and min_shared >= 1, got {self.n}, {self.min_shared}")
        for file in self.files:
            if not Path(file).exists():
                raise DataError(f"evaluation file {file!r} (--decontaminate) does not exist")


class EvalNgrams:
    """The distinct n-gram hashes of evaluation texts, sorted, for membership tests."""

    def __init__(self, texts: Iterable[str], n: int):
        self.n, self.words = n, WordHasher()
        parts, self.documents, self.too_short = [], 0, 0
        for text in texts:
            grams = ngram_hashes(self.words(normalized_words(text)), n)
            self.documents += 1
            self.too_short += grams.size == 0
            parts.append(grams)
        self.hashes = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)

    @classmethod
    def from_files(cls, files: Iterable[str], n: int) -> "EvalNgrams":
        options = ReadOptions(text_field=None)
        docs, _ = extract(read_paths([Path(f) for f in files], "eval", options))
        return cls((d.text for d in docs), n)

    def shared(self, text: str) -> int:
        """How many distinct n-grams of `text` occur in the evaluation data."""
        grams = np.unique(ngram_hashes(self.words(normalized_words(text)), self.n))
        return int(np.isin(grams, self.hashes, assume_unique=True).sum())


def decontaminate(docs: Iterable[Document], index: EvalNgrams, min_shared: int = 1,
                  show_progress: bool = False) -> tuple[list[Document], StageReport]:
    """Drop documents sharing at least `min_shared` n-grams with the evaluation data (reason: contaminated)."""
    report, kept = StageReport("decontaminate"), []
    docs = list(docs)
    for doc in progress(docs, "decontaminate", show_progress, total=len(docs)):
        if index.hashes.size and index.shared(doc.text) >= min_shared:
            report.remove(doc.source, "contaminated")
        else:
            report.keep(doc)
            kept.append(doc)
    report.info = {"n": index.n, "eval_documents": index.documents, "eval_documents_too_short": int(index.too_short),
                   "eval_ngrams": int(index.hashes.size)}
    return kept, report
