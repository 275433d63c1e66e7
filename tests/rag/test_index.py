"""The SQLite index: incremental updates, one transaction per file, embedder checks, bad inputs."""

import sqlite3

import pytest

from hybridlm.rag import index as index_module
from hybridlm.rag.index import RagError, build_index
from hybridlm.rag.retrieve import Index

from .conftest import HashEncoder


def _consistent(path) -> dict:
    """Every file's chunk count matches its rows, and FTS holds exactly the chunks. -> {path: n_chunks}"""
    db = sqlite3.connect(path)
    files = dict(db.execute("SELECT path, n_chunks FROM files"))
    counts = dict(db.execute("SELECT path, COUNT(*) FROM chunks GROUP BY path"))
    assert counts == {p: n for p, n in files.items() if n}
    chunk_ids = {r[0] for r in db.execute("SELECT id FROM chunks")}
    assert {r[0] for r in db.execute("SELECT rowid FROM chunks_fts")} == chunk_ids
    db.close()
    return files


def test_build_then_incremental_update(corpus, tmp_path, hash_encoder):
    out = tmp_path / "i.sqlite"
    first = build_index(corpus, out, hash_encoder, max_chars=400, overlap_chars=100)
    assert first.files == first.indexed == 9 and not first.skipped
    assert set(_consistent(out)) == {"assert.txt", "async.txt", "break.txt", "class.txt", "for.txt", "if.txt",
                                     "notes.md", "sub/page.html", "sub/code.py"}
    again = build_index(corpus, out, hash_encoder, max_chars=400, overlap_chars=100)
    assert (again.indexed, again.unchanged, again.chunks_added) == (0, 9, 0)
    (corpus / "notes.md").write_text("# Notes\n\nCompletely new text about walruses.\n")
    (corpus / "if.txt").unlink()
    third = build_index(corpus, out, hash_encoder, max_chars=400, overlap_chars=100)
    assert (third.indexed, third.unchanged, third.removed) == (1, 7, 1)
    files = _consistent(out)
    assert "if.txt" not in files
    idx = Index(out)
    hits = idx._hits(idx.bm25("walruses", 3))
    assert hits and hits[0].path == "notes.md"
    assert not idx.bm25("zyxwvut", 3)  # the replaced text is gone from BM25 too


def test_an_interrupted_run_leaves_a_usable_index(corpus, tmp_path, hash_encoder, monkeypatch):
    out = tmp_path / "i.sqlite"
    build_index(corpus, out, hash_encoder)
    for name in ("assert.txt", "async.txt", "break.txt"):
        (corpus / name).write_text(f"rewritten {name} " * 50)
    real, calls = index_module._replace_file, []

    def dying(db, rel, *args):
        calls.append(rel)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while storing the second changed file
        return real(db, rel, *args)

    monkeypatch.setattr(index_module, "_replace_file", dying)
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus, out, hash_encoder)
    files = _consistent(out)  # whole: the first file new, the others old
    assert len(files) == 9
    monkeypatch.setattr(index_module, "_replace_file", real)
    resumed = build_index(corpus, out, hash_encoder)
    assert resumed.indexed == 2 and resumed.unchanged == 7
    fresh = tmp_path / "fresh.sqlite"
    build_index(corpus, fresh, hash_encoder)
    text = lambda p: sorted(sqlite3.connect(p).execute("SELECT path, start_line, end_line, text FROM chunks"))
    assert text(out) == text(fresh)


def test_unreadable_files_are_skipped_and_counted(corpus, tmp_path, hash_encoder):
    (corpus / "blob.txt").write_bytes(b"\x00\x01\x02" * 100)
    (corpus / "latin.txt").write_bytes(b"caf\xe9 au lait")  # not UTF-8 but decodable: indexed
    stats = build_index(corpus, tmp_path / "i.sqlite", hash_encoder)
    assert stats.indexed == 10 and len(stats.skipped) == 1 and "blob.txt" in stats.skipped[0]


def test_bad_inputs(tmp_path, hash_encoder, corpus):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RagError, match="no documents"):
        build_index(empty, tmp_path / "x.sqlite", hash_encoder)
    with pytest.raises(RagError, match="no such directory"):
        build_index(tmp_path / "missing", tmp_path / "x.sqlite", hash_encoder)
    out = tmp_path / "i.sqlite"
    build_index(corpus, out, hash_encoder)
    with pytest.raises(RagError, match="built with the embedding model 'hash-encoder'"):
        build_index(corpus, out, HashEncoder("other-model", 64))
    not_db = tmp_path / "junk.sqlite"
    not_db.write_text("this is not sqlite " * 100)
    with pytest.raises(RagError, match="not a hybridlm index"):
        Index(not_db)
    with pytest.raises(RagError, match="no such index"):
        Index(tmp_path / "nothing.sqlite")
    foreign = tmp_path / "people.sqlite"  # another program's database: refused, and left as it was
    sqlite3.connect(foreign).executescript("CREATE TABLE people (name TEXT); INSERT INTO people VALUES ('ada');")
    before = foreign.read_bytes()
    with pytest.raises(RagError, match="not a hybridlm index"):
        Index(foreign)
    with pytest.raises(RagError, match="not a hybridlm index"):
        build_index(corpus, foreign, hash_encoder)
    assert foreign.read_bytes() == before
