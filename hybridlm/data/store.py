"""Where curated documents wait between curation and writing, so that memory stays bounded.

Curation keeps, per document, only a `DocRef` (its index, source and length in characters) and a few
fixed-size numbers (exact key, LSH band keys: streaming.py); the text goes to a `DiskStore`, one
JSON line per document in a spill file, and comes back by index when documents.jsonl and the shards
are written. Token ids take the same road (`IdStore`): each distinct document is encoded once, its
ids appended to a flat file and read back by positioned reads in the mixed order.

`MemoryStore` is the reference beside it: the same interface over a list in memory (what `prepare`
did before streaming); a test holds both to the same output bytes.
"""

from __future__ import annotations

import json
import os
from array import array
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .documents import Document


class DocRef:
    """What split and mix need of a document: its source and size, and where its text waits."""

    __slots__ = ("index", "source", "chars")

    def __init__(self, index: int, source: str, chars: int):
        self.index, self.source, self.chars = index, source, chars


class MemoryStore:
    """Documents held in a list (the in-memory reference)."""

    def __init__(self):
        self.docs: list[Document] = []

    def append(self, doc: Document) -> DocRef:
        self.docs.append(doc)
        return DocRef(len(self.docs) - 1, doc.source, doc.chars)

    def read(self, indices: Iterable[int]) -> Iterator[Document]:
        return (self.docs[i] for i in indices)

    def close(self) -> None:
        pass


class DiskStore:
    """Documents appended to `path` as JSON lines [text, source, origin]; 8 bytes of offset each in memory.
    `read` seeks per document, so reading in increasing index order is one sequential pass."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._out = self.path.open("wb")
        self._offsets = array("q")
        self._interned: dict[str, str] = {}  # one string object per source name, shared by every DocRef

    def append(self, doc: Document) -> DocRef:
        self._offsets.append(self._out.tell())
        self._out.write(json.dumps([doc.text, doc.source, doc.origin], ensure_ascii=False).encode() + b"\n")
        source = self._interned.setdefault(doc.source, doc.source)
        return DocRef(len(self._offsets) - 1, source, doc.chars)

    def read(self, indices: Iterable[int]) -> Iterator[Document]:
        self._out.flush()
        with self.path.open("rb") as f:
            for i in indices:
                f.seek(self._offsets[i])
                text, source, origin = json.loads(f.readline())
                yield Document(text, source, origin)

    def close(self) -> None:
        self._out.close()


def read_rows(fd: int, first: int, count: int, dtype, width: int = 1) -> np.ndarray:
    """`count` rows of `width` items of `dtype` from row `first` of a flat file, by one positioned
    read. Not a memory map: pages a map touches count in the process's resident memory, and the
    shards are written in a shuffled order that would touch all of them."""
    size = np.dtype(dtype).itemsize * width
    data = os.pread(fd, count * size, first * size)
    return np.frombuffer(data, dtype=dtype).reshape(count, width) if width > 1 else np.frombuffer(data, dtype=dtype)


class IdStore:
    """Token id arrays of documents, appended to a flat uint32 file and read back by document index."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._out = self.path.open("wb")
        # document index -> its first id and count, -1 for a document not stored: 16 bytes a document
        # (a dict of tuples took ~200)
        self._start, self._count = array("q"), array("q")
        self._size = 0
        self._fd = None

    def append(self, index: int, ids: np.ndarray) -> None:
        if index < len(self._start):
            raise ValueError(f"IdStore: documents go in increasing index order, got {index} after "
                             f"{len(self._start) - 1}")
        gap = [-1] * (index - len(self._start))
        self._start.extend(gap)
        self._count.extend(gap)
        self._out.write(np.asarray(ids, dtype=np.uint32).tobytes())
        self._start.append(self._size)
        self._count.append(ids.size)
        self._size += ids.size

    def __getitem__(self, index: int) -> np.ndarray:
        if self._fd is None:
            self._out.close()
            self._fd = os.open(self.path, os.O_RDONLY)
        if not 0 <= index < len(self._start) or self._count[index] < 0:
            raise KeyError(index)
        return read_rows(self._fd, self._start[index], self._count[index], np.uint32)

    def close(self) -> None:
        self._out.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
