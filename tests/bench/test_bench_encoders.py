"""bench/rag.py, bench/embed.py and bench/seq2seq_train.py: the question set is right, and the
scripts run end to end on small settings (their figures come from full runs)."""

import json

import pytest

from bench import rag


def test_questions_point_at_their_docstrings(tmp_path):
    questions = rag.make_corpus(tmp_path, ("json", "heapq"))
    assert {q.kind for q in questions} == {"describe", "identifier"}
    for q in questions:
        lines = (tmp_path / q.path).read_text().splitlines()
        heading = lines[q.lines[0] - 1]
        assert heading.startswith("## ")
        if q.kind == "identifier":
            assert q.text.split()[2] in heading  # "What does json.dumps do?" -> "## json.dumps(...)"
        else:
            name = heading[3:].split("(")[0].rsplit(".", 1)[1]
            assert f" {name} " not in f" {q.text} "  # the name is hidden in describe questions


@pytest.mark.slow
def test_rag_bench_reports_every_mode(capsys):
    assert rag.main(["--modules", "json,heapq"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {r["mode"] for r in report["rows"]} == {"dense", "bm25", "hybrid"}
    assert all(0 <= r["recall@1"] <= r["recall@5"] <= 1 for r in report["rows"])
    assert report["reindex_unchanged_files"] == 2


@pytest.mark.slow
def test_embed_bench_compares_with_sentence_transformers(capsys):
    from bench import embed

    assert embed.main(["--sentences", "16", "--runs", "1", "--batch", "8"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["min_cosine"] > 0.9999 and report["ratio"] > 0


@pytest.mark.slow
def test_seq2seq_learns_reverse_to_99_percent_exact_match(tmp_path):
    from bench import seq2seq_train

    result = seq2seq_train.run("task:reverse:4-10", 1500, None, 64, 2e-3, 1000, tmp_path, threads=1)
    assert result["exact_match"] >= 0.99, result
