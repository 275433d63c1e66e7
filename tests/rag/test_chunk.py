"""Chunking: paragraph boundaries, size limits, overlap, exact line spans; document reading."""

import pytest

from hybridlm.rag.chunk import UnreadableDocument, chunk_text, paragraphs, read_document


def _doc(n: int, words: int = 20) -> str:
    return "\n\n".join(" ".join(f"p{i}w{j}" for j in range(words)) for i in range(n))


def test_chunks_are_whole_paragraphs_within_the_limit():
    text = _doc(12)
    chunks = chunk_text(text, max_chars=400, overlap_chars=0)
    assert len(chunks) > 1 and all(len(c.text) <= 400 for c in chunks)
    paras = {p.text for p in paragraphs(text)}
    for c in chunks:
        assert set(c.text.split("\n\n")) <= paras  # never a paragraph cut in two
    assert [p for c in chunks for p in c.text.split("\n\n")] == [p.text for p in paragraphs(text)]


def test_line_spans_point_at_the_text():
    text = "title\n\n" + _doc(6) + "\n\n\nlast line"
    lines = text.split("\n")
    for c in chunk_text(text, max_chars=300, overlap_chars=120):
        span = "\n".join(lines[c.start_line - 1:c.end_line])
        assert [p for p in span.split("\n") if p] == [p for p in c.text.split("\n") if p]


def test_consecutive_chunks_overlap_by_whole_paragraphs():
    chunks = chunk_text(_doc(10, words=10), max_chars=300, overlap_chars=150)
    for a, b in zip(chunks, chunks[1:]):
        first_of_b = b.text.split("\n\n")[0]
        assert first_of_b in a.text.split("\n\n")  # b starts with a's last paragraph(s)
        assert b.start_line <= a.end_line


def test_overlong_paragraphs_and_lines_are_cut():
    long_para = "\n".join("x" * 50 for _ in range(30))
    one_line = "y" * 2500
    chunks = chunk_text(long_para + "\n\n" + one_line, max_chars=500, overlap_chars=0)
    assert all(len(c.text) <= 500 for c in chunks)
    assert "".join(c.text for c in chunks if c.text.startswith("y")) == one_line
    assert chunks[-1].start_line == chunks[-1].end_line == 32


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("x", max_chars=100, overlap_chars=100)


def test_read_document_kinds(tmp_path):
    html = tmp_path / "a.html"
    html.write_text("<html><body><nav>menu</nav><main><p>Real text.</p></main><script>x()</script></body></html>")
    assert read_document(html) == "Real text."
    crlf = tmp_path / "b.txt"
    crlf.write_bytes(b"one\r\ntwo\r\n")
    assert read_document(crlf) == "one\ntwo\n"
    binary = tmp_path / "c.txt"
    binary.write_bytes(b"\x00\x01\x02\x03" * 10)
    with pytest.raises(UnreadableDocument, match="binary"):
        read_document(binary)
