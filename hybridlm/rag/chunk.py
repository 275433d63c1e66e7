"""Documents -> overlapping chunks that respect paragraph boundaries, each with its line span.

A paragraph is a run of non-blank lines. Chunks are whole paragraphs packed up to `max_chars`
(MiniLM reads 256 tokens, ~1000 characters of English); a paragraph longer than that is cut at
line boundaries, and a single overlong line at `max_chars`. Consecutive chunks overlap: the next
chunk starts with the previous chunk's trailing paragraphs, up to `overlap_chars`, so an answer
that straddles a boundary is whole in one of them. Line numbers are 1-based and inclusive; for
HTML they count lines of the extracted text, not of the markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".py", ".html", ".htm")


@dataclass(frozen=True)
class Chunk:
    text: str
    start_line: int  # first line of the chunk, 1-based
    end_line: int  # last line, inclusive


@dataclass(frozen=True)
class _Piece:
    text: str
    start: int
    end: int


class UnreadableDocument(ValueError):
    """A file that is binary, undecodable or unreadable: skipped and counted by the indexer."""


def read_document(path: Path) -> str:
    """The text of a text, Markdown, reStructuredText, Python or HTML file (HTML through the data
    pipeline's extraction). Raises UnreadableDocument for binary or unreadable files."""
    from ..data.extract import clean_text, decode_bytes, html_to_text

    try:
        data = path.read_bytes()
    except OSError as e:
        raise UnreadableDocument(f"{path}: cannot be read ({e.strerror})") from None
    if b"\0" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UnreadableDocument(f"{path}: binary (NUL bytes)")
    is_html = path.suffix.lower() in (".html", ".htm")
    text, _, bad = decode_bytes(data, html=is_html)
    if bad > max(8, len(text) // 100):
        raise UnreadableDocument(f"{path}: not text ({bad} undecodable sequences)")
    if is_html:
        text = html_to_text(text)
    return clean_text(text) if is_html else text.replace("\r\n", "\n").replace("\r", "\n")


def paragraphs(text: str) -> list[_Piece]:
    """Runs of non-blank lines with their line spans."""
    out, current, start = [], [], 0
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            if not current:
                start = number
            current.append(line)
        elif current:
            out.append(_Piece("\n".join(current), start, number - 1))
            current = []
    if current:
        out.append(_Piece("\n".join(current), start, start + len(current) - 1))
    return out


def _fit(piece: _Piece, max_chars: int) -> list[_Piece]:
    """A paragraph longer than max_chars, cut at line boundaries (an overlong line at max_chars)."""
    if len(piece.text) <= max_chars:
        return [piece]
    out, lines, first = [], [], piece.start
    for offset, line in enumerate(piece.text.split("\n")):
        number = piece.start + offset
        while len(line) > max_chars:  # one long line: cut it, the pieces share its line number
            if lines:
                out.append(_Piece("\n".join(lines), first, number - 1))
                lines = []
            out.append(_Piece(line[:max_chars], number, number))
            line = line[max_chars:]
            first = number
        if lines and len("\n".join(lines)) + 1 + len(line) > max_chars:
            out.append(_Piece("\n".join(lines), first, number - 1))
            lines = []
        if not lines:
            first = number
        if line:
            lines.append(line)
    if lines:
        out.append(_Piece("\n".join(lines), first, piece.end))
    return out


def chunk_text(text: str, max_chars: int = 1000, overlap_chars: int = 200) -> list[Chunk]:
    """Pack paragraphs into chunks of at most max_chars (see the module doc)."""
    if max_chars < 1 or not 0 <= overlap_chars < max_chars:
        raise ValueError(f"need max_chars >= 1 and 0 <= overlap_chars < max_chars, got {max_chars}, {overlap_chars}")
    pieces = [p for para in paragraphs(text) for p in _fit(para, max_chars)]
    chunks, current = [], []

    def size(ps: list[_Piece]) -> int:
        return sum(len(p.text) for p in ps) + 2 * max(len(ps) - 1, 0)

    for piece in pieces:
        if current and size(current + [piece]) > max_chars:
            chunks.append(current)
            carried = []  # the overlap: trailing whole paragraphs of the chunk just closed
            for p in reversed(current):
                if size([p] + carried) > overlap_chars or size([p] + carried + [piece]) > max_chars:
                    break
                carried.insert(0, p)
            current = carried
        current.append(piece)
    if current:
        chunks.append(current)
    return [Chunk("\n\n".join(p.text for p in c), c[0].start, c[-1].end) for c in chunks]
