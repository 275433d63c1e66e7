"""Where raw documents come from: input paths (folders, text/HTML files, JSONL, parquet) grouped into
named sources, and the default corpus every Python installation carries.

A source yields `Raw` records: undecoded bytes or text, marked HTML or plain. Turning them into text
is the extraction stage's job (extract.py); a record that cannot become a document (a JSON line that
does not parse, a missing text field) is yielded with `problem` set so that stage counts it.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator

from .documents import DataError

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
RECORD_SUFFIXES = (".jsonl", ".ndjson", ".parquet")
# what a folder walk picks up; a file named on the command line is read whatever its suffix
DEFAULT_EXTENSIONS = (".txt", ".md", ".rst", *HTML_SUFFIXES, ".jsonl", ".ndjson", ".parquet")
_SKIPPED_DIRS = {"__pycache__", "node_modules", "site-packages"}


@dataclass
class Raw:
    source: str
    origin: str  # path, path:line, path#row or pydoc:topic
    payload: bytes | str | None  # bytes are decoded by extraction; None when `problem` is set
    html: bool = False  # payload is an HTML page
    problem: str | None = None  # why this record holds no text (bad_json, no_text_field, ...)


@dataclass
class Source:
    """A named stream of raw records. `inputs` describes it for the manifest."""

    name: str
    inputs: list[str]
    read: Callable[[], Iterator[Raw]]


@dataclass(frozen=True)
class ReadOptions:
    text_field: str | None = "text"  # JSONL/parquet field holding the text; None = every string field joined
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS  # suffixes a folder walk reads (lower case, with the dot)
    max_docs: int | None = None  # records read from each source at most (None = all)


def _suffixes(path: Path) -> str:
    """The suffix that decides how a file is read, under any .gz: data.jsonl.gz -> .jsonl."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[1]


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _record_text(record: Any, text_field: str | None) -> tuple[str | None, str | None]:
    """(text, problem) of one JSON/parquet record."""
    if text_field is None:
        return "\n".join(_strings(record)), None
    if not isinstance(record, dict) or text_field not in record or record[text_field] is None:
        return None, "no_text_field"
    value = record[text_field]
    return (value, None) if isinstance(value, str) else (None, "text_not_a_string")


def _read_jsonl(path: Path, source: str, text_field: str | None) -> Iterator[Raw]:
    with _open_bytes(path) as f:
        for number, line in enumerate(f, 1):
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line.strip():
                continue
            origin = f"{path}:{number}"
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                yield Raw(source, origin, None, problem="bad_json")
                continue
            text, problem = _record_text(record, text_field)
            yield Raw(source, origin, text, problem=problem)


def _read_parquet(path: Path, source: str, text_field: str | None) -> Iterator[Raw]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for a file that is not parquet
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    names = file.schema_arrow.names
    if text_field is not None and text_field not in names:
        raise DataError(f"{path}: no column {text_field!r} (columns: {', '.join(names)}); "
                        f"choose one with --text-field")
    row = 0
    for batch in file.iter_batches(columns=None if text_field is None else [text_field]):
        for record in batch.to_pylist():
            text, problem = _record_text(record, text_field)
            yield Raw(source, f"{path}#{row}", text, problem=problem)
            row += 1


def read_file(path: Path, source: str, options: ReadOptions) -> Iterator[Raw]:
    """The records of one file, read by its suffix: JSONL and parquet hold many, any other file one."""
    suffix = _suffixes(path)
    if suffix in (".jsonl", ".ndjson"):
        yield from _read_jsonl(path, source, options.text_field)
    elif suffix == ".parquet":
        yield from _read_parquet(path, source, options.text_field)
    else:
        with _open_bytes(path) as f:
            yield Raw(source, str(path), f.read(), html=suffix in HTML_SUFFIXES)


def walk(folder: Path, extensions: tuple[str, ...]) -> Iterator[Path]:
    """Files under `folder` with one of `extensions`, in sorted order; hidden entries are skipped."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS)
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and _suffixes(path) in extensions:
                yield path


def read_paths(paths: list[Path], source: str, options: ReadOptions) -> Iterator[Raw]:
    """Every record of `paths` (files and folders), at most options.max_docs of them."""
    def records() -> Iterator[Raw]:
        for path in paths:
            files = walk(path, options.extensions) if path.is_dir() else [path]
            for file in files:
                yield from read_file(file, source, options)

    return islice(records(), options.max_docs)


_NAMED = re.compile(r"^([A-Za-z0-9_.\-]+)=(.+)$")


def source_name(path: Path) -> str:
    """A source named after its path: the folder's name, or the file's name without its suffixes."""
    path = path.resolve()
    return path.name if path.is_dir() else path.name.split(".")[0] or path.name


def parse_inputs(inputs: list[str], options: ReadOptions) -> list[Source]:
    """`PATH` or `NAME=PATH` arguments -> sources; several paths under one name form one source."""
    grouped: dict[str, list[Path]] = {}
    for spec in inputs:
        match = _NAMED.match(spec)
        if match and not Path(spec).exists():
            name, path = match.group(1), Path(match.group(2))
        else:
            name, path = None, Path(spec)
        if not path.exists():
            raise DataError(f"input {str(path)!r} does not exist")
        grouped.setdefault(name or source_name(path), []).append(path)
    return [Source(name, [str(p) for p in paths], lambda paths=paths, name=name: read_paths(paths, name, options))
            for name, paths in grouped.items()]
