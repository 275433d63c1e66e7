"""The retrieval index: one SQLite file holding chunks, their vectors and a BM25 (FTS5) table.

    meta(key, value)            format, the embedding model's name and width
    files(path, sha256, ...)    one row per indexed document, by path relative to the corpus root
    chunks(id, path, start_line, end_line, text, vector)   vector: float32 blob, unit length
    chunks_fts(text)            FTS5 full-text table, rowid = chunks.id (BM25 scoring)

Re-indexing is incremental: a file whose content hash is unchanged is skipped, a changed file has
its chunks replaced, a deleted file's chunks are removed. Every file's change is one transaction,
so a run killed at any point leaves an index that is whole and usable (each file either old or
new); the next run picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .chunk import TEXT_SUFFIXES, Chunk, UnreadableDocument, chunk_text, read_document
from .embed import SentenceEncoder

FORMAT = "hybridlm-rag-1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, n_chunks INTEGER NOT NULL,
                                  indexed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, path TEXT NOT NULL, start_line INTEGER NOT NULL,
                                   end_line INTEGER NOT NULL, text TEXT NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_path ON chunks(path);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(text, tokenize = 'porter unicode61');
"""


_TABLES = {"meta", "files", "chunks", "chunks_fts"}


class RagError(ValueError):
    """An index that cannot be built, opened or searched as asked (one line for the user)."""


@dataclass
class IndexStats:
    files: int = 0  # documents found under the root
    indexed: int = 0  # new or changed documents (re)embedded
    unchanged: int = 0  # skipped: same content hash as in the index
    removed: int = 0  # in the index but no longer under the root
    skipped: list[str] = field(default_factory=list)  # unreadable or binary files, with the reason
    chunks_added: int = 0
    chunks_total: int = 0
    seconds: float = 0.0


def connect(path: str | os.PathLike, create: bool = False) -> sqlite3.Connection:
    path = Path(path)
    if not create and not path.is_file():
        raise RagError(f"{path}: no such index (build one with `hybridlm rag index DIR --out {path}`)")
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    db = None
    try:
        db = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT below
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        # another program's SQLite file is refused before anything is written to it
        if (tables or not create) and not _TABLES <= tables:
            raise RagError(f"{path}: not a hybridlm index (it lacks the tables {', '.join(sorted(_TABLES - tables))})")
        if create:
            db.execute("PRAGMA journal_mode = WAL")  # readers see the last committed state while a run writes
            db.executescript(_SCHEMA)
        return db
    except (sqlite3.DatabaseError, RagError) as e:
        if db is not None:
            db.close()
        if isinstance(e, RagError):
            raise
        raise RagError(f"{path}: not a hybridlm index ({e})") from None


def read_meta(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT key, value FROM meta"))


def check_embedder(db: sqlite3.Connection, path, name: str, dim: int) -> None:
    """Refuse an index whose vectors came from another embedding model."""
    meta = read_meta(db)
    if meta and (meta.get("format") != FORMAT):
        raise RagError(f"{path}: index format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta and (meta.get("embedder") != name or int(meta.get("dim", -1)) != dim):
        raise RagError(f"{path} was built with the embedding model {meta.get('embedder')!r} "
                          f"({meta.get('dim')} dims), not {name!r} ({dim} dims): use that model or a new index")


def find_documents(root: Path, suffixes: tuple[str, ...] = TEXT_SUFFIXES) -> list[Path]:
    """Documents under root (sorted; hidden directories skipped)."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in suffixes
                  and not any(part.startswith(".") for part in p.relative_to(root).parts[:-1]))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_index(root: str | os.PathLike, out: str | os.PathLike, encoder: SentenceEncoder, *,
                max_chars: int = 1000, overlap_chars: int = 200, batch_size: int = 32,
                progress: bool = False) -> IndexStats:
    """Index (or update the index of) every document under `root` into the SQLite file `out`."""
    root, start = Path(root), time.perf_counter()
    if not root.exists():
        raise RagError(f"{root}: no such directory")
    documents = find_documents(root)
    if not documents:
        raise RagError(f"{root}: no documents to index (looked for {', '.join(TEXT_SUFFIXES)})")
    base = root if root.is_dir() else root.parent
    db = connect(out, create=True)
    try:
        check_embedder(db, out, encoder.name, encoder.dim)
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                       [("format", FORMAT), ("embedder", encoder.name), ("dim", str(encoder.dim)),
                        ("max_chars", str(max_chars)), ("overlap_chars", str(overlap_chars))])
        db.execute("COMMIT")
        stats = IndexStats(files=len(documents))
        known = dict(db.execute("SELECT path, sha256 FROM files"))
        pending = _changed_documents(documents, base, known, stats, max_chars, overlap_chars)
        _embed_and_store(db, pending, encoder, batch_size, progress, stats)
        present = {p.relative_to(base).as_posix() for p in documents}
        for gone in sorted(set(known) - present):
            _replace_file(db, gone, None, [], None)
            stats.removed += 1
        stats.chunks_total = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
    finally:
        db.close()
    stats.seconds = time.perf_counter() - start
    return stats


def _changed_documents(documents, base, known, stats, max_chars, overlap_chars):
    """[(relative path, sha256, chunks)] for new or changed readable documents."""
    pending = []
    for path in documents:
        rel = path.relative_to(base).as_posix()
        try:
            data = path.read_bytes()
        except OSError as e:
            stats.skipped.append(f"{rel}: cannot be read ({e.strerror})")
            continue
        digest = _sha256(data)
        if known.get(rel) == digest:
            stats.unchanged += 1
            continue
        try:
            chunks = chunk_text(read_document(path), max_chars, overlap_chars)
        except UnreadableDocument as e:
            stats.skipped.append(str(e).replace(str(path), rel))
            continue
        pending.append((rel, digest, chunks))
    return pending


def _embed_and_store(db, pending, encoder: SentenceEncoder, batch_size: int, progress: bool, stats: IndexStats):
    """Embed the chunks of many files per call (batches fill across files), then store each file in
    its own transaction."""
    from tqdm.auto import tqdm

    total = sum(len(c) for _, _, c in pending)
    bar = tqdm(total=total, desc="index", unit="chunk", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    group, group_chunks = [], 0
    for i, item in enumerate(pending):
        group.append(item)
        group_chunks += len(item[2])
        if group_chunks >= 8 * batch_size or i == len(pending) - 1:
            texts = [c.text for _, _, chunks in group for c in chunks]
            vectors = encoder.embed(texts, batch_size=batch_size) if texts else np.zeros((0, encoder.dim), np.float32)
            offset = 0
            for rel, digest, chunks in group:
                _replace_file(db, rel, digest, chunks, vectors[offset:offset + len(chunks)])
                offset += len(chunks)
                stats.indexed += 1
                stats.chunks_added += len(chunks)
            bar.update(len(texts))
            group, group_chunks = [], 0
    bar.close()


def _replace_file(db: sqlite3.Connection, rel: str, digest: str | None, chunks: list[Chunk],
                  vectors: np.ndarray | None) -> None:
    """One transaction: drop the file's old chunks, insert the new ones (none when digest is None)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        old = [r[0] for r in db.execute("SELECT id FROM chunks WHERE path = ?", (rel,))]
        db.executemany("DELETE FROM chunks_fts WHERE rowid = ?", [(i,) for i in old])
        db.execute("DELETE FROM chunks WHERE path = ?", (rel,))
        db.execute("DELETE FROM files WHERE path = ?", (rel,))
        if digest is not None:
            for chunk, vector in zip(chunks, vectors):
                cursor = db.execute("INSERT INTO chunks (path, start_line, end_line, text, vector) VALUES (?, ?, ?, ?, ?)",
                                    (rel, chunk.start_line, chunk.end_line, chunk.text,
                                     np.ascontiguousarray(vector, dtype=np.float32).tobytes()))
                db.execute("INSERT INTO chunks_fts (rowid, text) VALUES (?, ?)", (cursor.lastrowid, chunk.text))
            db.execute("INSERT INTO files VALUES (?, ?, ?, ?)", (rel, digest, len(chunks), time.time()))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
