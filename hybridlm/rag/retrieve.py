"""Retrieval over an index: exact dense cosine top-k, BM25 keyword scoring (SQLite FTS5), and their
reciprocal-rank fusion (Cormack et al. 2009), because dense retrieval alone misses identifiers and
rare names that keyword matching finds, and keyword matching misses paraphrases.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .embed import SentenceEncoder
from .index import RagError, check_embedder, connect, read_meta

MODES = ("dense", "bm25", "hybrid")
RRF_K = 60  # the fusion constant of Cormack et al.: dampens the weight of the very first ranks


@dataclass
class Hit:
    chunk_id: int
    path: str  # relative to the indexed root
    start_line: int
    end_line: int
    text: str
    score: float  # cosine (dense), BM25 relevance (bm25: higher is better), or fused RRF score

    def as_dict(self) -> dict:
        return asdict(self)


class Index:
    """An opened index: the vectors are read into memory once, for exact cosine search."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.db: sqlite3.Connection = connect(self.path)
        self.meta = read_meta(self.db)
        if "format" not in self.meta:
            self.db.close()
            raise RagError(f"{self.path}: not a hybridlm index (no format record): build one with `hybridlm rag index`")
        ids, blobs = [], []
        for chunk_id, blob in self.db.execute("SELECT id, vector FROM chunks ORDER BY id"):
            ids.append(chunk_id)
            blobs.append(blob)
        dim = int(self.meta.get("dim", 0))
        self.ids = np.array(ids, dtype=np.int64)
        self.vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim) if ids else \
            np.zeros((0, dim), np.float32)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def embedder(self) -> str | None:
        return self.meta.get("embedder")

    def close(self) -> None:
        self.db.close()

    def chunks(self, ids: list[int]) -> dict[int, tuple[str, int, int, str]]:
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT id, path, start_line, end_line, text FROM chunks WHERE id IN ({marks})", ids)
        return {r[0]: r[1:] for r in rows}

    def _hits(self, ranked: list[tuple[int, float]]) -> list[Hit]:
        found = self.chunks([i for i, _ in ranked]) if ranked else {}
        return [Hit(i, *found[i], score=s) for i, s in ranked if i in found]

    # -- the three retrievers ----------------------------------------------------------------
    def dense(self, query_vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Exact cosine top-k: the vectors are unit length, so cosine is a dot product. -> [(id, cosine)]"""
        if not len(self):
            return []
        q = query_vector.astype(np.float32) / max(float(np.linalg.norm(query_vector)), 1e-12)
        scores = self.vectors @ q
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(self.ids[i]), float(scores[i])) for i in top]

    def bm25(self, query: str, k: int) -> list[tuple[int, float]]:
        """FTS5's BM25 over the query's words (any of them may match). -> [(id, relevance)], higher better."""
        words = re.findall(r"\w+", query.lower())
        if not words or not len(self):
            return []
        match = " OR ".join('"' + w.replace('"', "") + '"' for w in dict.fromkeys(words))
        rows = self.db.execute("SELECT rowid, bm25(chunks_fts) AS s FROM chunks_fts WHERE chunks_fts MATCH ? "
                               "ORDER BY s LIMIT ?", (match, k))
        return [(int(i), -float(s)) for i, s in rows]  # FTS5's bm25() is negated: lower = more relevant


def fuse(rankings: list[list[tuple[int, float]]], k: int, rrf_k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: score(d) = sum over rankings of 1 / (rrf_k + rank of d), rank from 1."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, (chunk_id, _) in enumerate(ranking, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]


def retrieve(index: Index, query: str, k: int = 4, mode: str = "hybrid",
             encoder: SentenceEncoder | None = None) -> list[Hit]:
    """The k best chunks for `query`. dense and hybrid need the encoder the index was built with."""
    if mode not in MODES:
        raise RagError(f"retrieval mode must be one of {MODES}, not {mode!r}")
    if k < 1:
        raise RagError("k must be at least 1")
    if not query.strip():
        raise RagError("the question is empty")
    if not len(index):
        raise RagError(f"{index.path}: the index is empty (no chunks): index some documents first")
    if mode == "bm25":
        return index._hits(index.bm25(query, k))
    if encoder is None:
        raise RagError(f"{mode} retrieval needs the embedding model ({index.embedder})")
    check_embedder(index.db, index.path, encoder.name, encoder.dim)
    dense = index.dense(encoder.embed([query])[0], k if mode == "dense" else max(4 * k, 50))
    if mode == "dense":
        return index._hits(dense)
    return index._hits(fuse([dense, index.bm25(query, max(4 * k, 50))], k))
