"""Retrieval: dense top-k is exact, BM25 finds rare identifiers, fusion follows the RRF formula."""

import numpy as np
import pytest

from hybridlm.rag.index import RagError, build_index
from hybridlm.rag.retrieve import Index, fuse, retrieve

from .conftest import HashEncoder


@pytest.fixture
def built(corpus, tmp_path, hash_encoder):
    out = tmp_path / "i.sqlite"
    build_index(corpus, out, hash_encoder, max_chars=300, overlap_chars=0)
    return Index(out)


def test_dense_is_the_exact_cosine_top_k(built, hash_encoder):
    q = hash_encoder.embed(["asynchronous coroutine function"])[0]
    got = built.dense(q, 5)
    scores = built.vectors @ q
    best = np.argsort(-scores, kind="stable")[:5]
    assert [i for i, _ in got] == [int(built.ids[j]) for j in best]
    np.testing.assert_allclose([s for _, s in got], scores[best], rtol=1e-6)


def test_bm25_finds_rare_identifiers(built, hash_encoder):
    hits = retrieve(built, "what is a zyxwvut?", k=3, mode="bm25")
    assert hits[0].path == "notes.md" and "zyxwvut" in hits[0].text
    assert retrieve(built, "frobnicate", k=3, mode="hybrid", encoder=hash_encoder)[0].path in ("sub/code.py", "notes.md")
    assert retrieve(built, "Quokkas", k=1, mode="bm25")[0].path == "sub/page.html"


def test_reciprocal_rank_fusion():
    fused = fuse([[(1, 0.9), (2, 0.8), (3, 0.1)], [(3, 5.0), (1, 4.0)]], k=3, rrf_k=60)
    scores = dict(fused)
    assert scores[1] == pytest.approx(1 / 61 + 1 / 62)
    assert scores[3] == pytest.approx(1 / 63 + 1 / 61)
    assert scores[2] == pytest.approx(1 / 62)
    assert [i for i, _ in fused] == [1, 3, 2]


def test_retrieval_errors(built, tmp_path, corpus):
    with pytest.raises(RagError, match="mode"):
        retrieve(built, "x", mode="fuzzy")
    with pytest.raises(RagError, match="empty"):
        retrieve(built, "   ", mode="bm25")
    with pytest.raises(RagError, match="needs the embedding model"):
        retrieve(built, "x", mode="dense")
    with pytest.raises(RagError, match="built with the embedding model"):
        retrieve(built, "x", mode="dense", encoder=HashEncoder("other", 64))
    empty = tmp_path / "empty.sqlite"
    build_index(corpus / "notes.md", empty, HashEncoder())
    import sqlite3

    db = sqlite3.connect(empty)
    db.execute("DELETE FROM chunks")
    db.execute("DELETE FROM chunks_fts")
    db.commit()
    with pytest.raises(RagError, match="index is empty"):
        retrieve(Index(empty), "x", mode="bm25")
