"""The default corpus, present on every machine: Python's own documentation and standard library.

- "prose": the values of `pydoc_data.topics.topics`, the text `help()` shows for keywords and
  language topics (79 documents, about 0.5 MB, in Python 3.11).
- "code": the standard library's .py files under the directory of the `os` module. Skipped:
  site-packages (not the standard library), __pycache__, test suites (test/, tests/, idle_test/;
  they hold many near copies and deliberately broken files) and pydoc_data (topics.py is the prose
  source again, as one Python literal).
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path
from typing import Iterator

from .sources import Raw, Source, walk

_CODE_SKIPPED = {"site-packages", "test", "tests", "idle_test", "pydoc_data", "__pycache__"}


def stdlib_dir() -> Path:
    return Path(os.__file__).resolve().parent


def _prose(max_docs: int | None) -> Iterator[Raw]:
    from pydoc_data.topics import topics

    for name in islice(sorted(topics), max_docs):
        yield Raw("prose", f"pydoc:{name}", topics[name])


def code_files() -> Iterator[Path]:
    root = stdlib_dir()
    for path in walk(root, (".py",)):
        if not _CODE_SKIPPED.intersection(path.relative_to(root).parts[:-1]):
            yield path


def _code(max_docs: int | None) -> Iterator[Raw]:
    for path in islice(code_files(), max_docs):
        yield Raw("code", str(path), path.read_bytes())


def default_sources(max_docs: int | None = None) -> list[Source]:
    """The two default sources; `max_docs` caps each (documents taken in sorted order)."""
    return [Source("prose", ["pydoc_data.topics"], lambda: _prose(max_docs)),
            Source("code", [f"{stdlib_dir()}/**/*.py (no tests, site-packages or pydoc_data)"],
                   lambda: _code(max_docs))]
