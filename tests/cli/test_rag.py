"""`hybridlm rag index | search | ask` with the real MiniLM encoder: output and one-line errors."""

import json

import pytest


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    from pydoc_data.topics import topics

    for name in ("assert", "break", "continue"):
        (root / f"{name}.txt").write_text(topics[name])
    (root / "animals.md").write_text("# Animals\n\nQuokkas are small marsupials found in Western Australia.\n")
    (root / "blob.txt").write_bytes(b"\x00\x01" * 50)
    return root


@pytest.fixture(scope="module")
def built(docs, tmp_path_factory):
    from hybridlm.cli import main

    out = tmp_path_factory.mktemp("index") / "i.sqlite"
    assert main(["rag", "index", str(docs), "--out", str(out), "--no-progress"]) == 0
    return out


def test_index_reports_and_is_incremental(cli, docs, built):
    code, out, err = cli("rag", "index", str(docs), "--out", str(built), "--json", "--no-progress")
    summary = json.loads(out)
    assert code == 0 and summary["indexed"] == 0 and summary["unchanged"] == 4 and summary["skipped"] == 1
    assert "skipped blob.txt: binary" in err


def test_search_finds_the_passage(cli, built):
    code, out, _ = cli("rag", "search", str(built), "Which animals live in Western Australia?", "--k", "2", "--json")
    hits = json.loads(out)["hits"]
    assert code == 0 and hits[0]["path"] == "animals.md" and hits[0]["start_line"] == 1
    code, out, _ = cli("rag", "search", str(built), "quokkas", "--mode", "bm25")
    assert code == 0 and out.startswith("[1] animals.md:1-3")


@pytest.mark.slow  # loads SmolLM2 and prefills its sources (~13 s); the library path is in tests/rag/test_answer.py
def test_ask_prints_answer_and_numbered_sources(cli, built):
    code, out, err = cli("rag", "ask", str(built), "What are quokkas?", "--k", "2", "--max-new-tokens", "8", "--json")
    record = json.loads(out)
    assert code == 0 and record["model"] == "smollm2-135m" and record["answer"]
    assert [s["n"] for s in record["sources"]] == [1, 2] and record["sources"][0]["path"] == "animals.md"


def test_bad_inputs(cli, tmp_path, built, assert_one_line_error):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(*cli("rag", "index", str(empty), "--out", str(tmp_path / "x.sqlite")), "no documents")
    assert not (tmp_path / "x.sqlite").exists()
    assert_one_line_error(*cli("rag", "ask", str(tmp_path / "none.sqlite"), "q"), "no such index")
    docs = tmp_path / "d"
    docs.mkdir()
    (docs / "a.txt").write_text("text")
    assert_one_line_error(*cli("rag", "index", str(docs), "--out", str(built), "--embedder", "smollm2-135m"),
                          "not an encoder")
    assert_one_line_error(*cli("rag", "search", str(built), "   "), "empty")
