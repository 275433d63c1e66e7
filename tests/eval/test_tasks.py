"""Task files: formats parsed, bad lines reported with their numbers (or skipped and counted),
answers extracted GSM8K-style, contamination found through the data pipeline's n-gram index."""

import json

import pytest

from hybridlm.eval.contamination import contamination
from hybridlm.eval.generation_tasks import extract_answer
from hybridlm.eval.tasks import CodeItem, read_task


def write(path, lines):
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return path


def test_multiple_choice_bad_lines_are_reported_with_line_numbers(tmp_path):
    good = {"context": "c", "choices": ["a", "b"], "answer": 1}
    path = write(tmp_path / "t.jsonl", [good, "{not json", {"context": "c", "choices": ["a", "b"], "answer": 2},
                                        "", {"context": "c", "choices": "ab", "answer": 0}, good])
    with pytest.raises(ValueError) as err:
        read_task(path, "multiple-choice")
    msg = str(err.value)
    assert "3 bad line(s)" in msg and "line 2:" in msg and "line 3: answer index 2 is out of range" in msg
    assert "line 5:" in msg and "--skip-bad" in msg
    task = read_task(path, "multiple-choice", skip_bad=True)
    assert [it.line for it in task.items] == [1, 6] and [n for n, _ in task.skipped] == [2, 3, 5]


def test_formats_and_missing_files(tmp_path):
    gen = read_task(write(tmp_path / "g.jsonl", [{"prompt": "p", "answer": 72}]), "generation").items[0]
    assert gen.answer == "72"
    mbpp = read_task(write(tmp_path / "m.jsonl", [{"prompt": "def f(): return 1\n", "test_list": ["assert f() == 1"]}]),
                     "code").items[0]
    assert "assert f() == 1" in mbpp.program("") and "check(" not in mbpp.program("")
    he = CodeItem("t", "def f():\n", "def check(c):\n    assert c() == 1\n", "f")
    assert he.program("    return 1\n").endswith("check(f)\n")
    with pytest.raises(FileNotFoundError):
        read_task(tmp_path / "nope.jsonl", "generation")
    with pytest.raises(ValueError, match="entry_point"):
        read_task(write(tmp_path / "c.jsonl", [{"prompt": "x", "test": "y", "entry_point": "a b"}]), "code")
    with pytest.raises(ValueError, match="no valid items"):
        read_task(write(tmp_path / "e.jsonl", ["", ""]), "generation")


@pytest.mark.parametrize("text, expected", [
    ("Tom has 3 + 4 = 7 apples.\n#### 7", "7"), ("The answer is 1,234.", "1234"), ("so 2.50 dollars", "2.5"),
    ("-3 degrees", "-3"), ("no number here", None), ("first 3 then 42", "42"), ("#### 18\nextra 5", "18")])
def test_number_extraction(text, expected):
    assert extract_answer(text, "number") == expected


def test_contamination_finds_the_items_copied_into_the_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    leaked = "the quick brown fox jumps over the lazy dog near the quiet river bank at dawn today"
    (corpus / "a.txt").write_text("Some unrelated text about compilers. " * 20 + "\n" + leaked.upper() + "!\n")
    task = write(tmp_path / "task.jsonl", [
        {"context": "An unrelated question about planets and their moons in the outer solar system today", "choices": ["a", "b"], "answer": 0},
        {"context": "The quick brown fox jumps over the lazy dog, near the quiet river bank", "choices": ["at dawn today", "x"], "answer": 0},
        {"context": "short", "choices": ["a", "b"], "answer": 1}])
    report = contamination(corpus, task, n=8)
    assert report.items == 3 and [c["line"] for c in report.contaminated] == [2]
    assert report.contaminated[0]["shared_ngrams"] >= 1 and report.too_short == 1
    assert contamination(corpus, task, n=8, min_shared=100).contaminated == []


def test_shipped_samples_parse_and_their_code_tasks_are_solvable():
    from pathlib import Path

    import hybridlm.eval
    from hybridlm.eval.generation_tasks import score_code
    from hybridlm.eval.sandbox import SandboxLimits

    samples = Path(hybridlm.eval.__file__).parent / "samples"
    assert len(read_task(samples / "mc.jsonl", "multiple-choice").items) >= 10
    assert len(read_task(samples / "mc_examples.jsonl", "multiple-choice").items) >= 3
    assert all(extract_answer(it.answer) for it in read_task(samples / "gsm.jsonl", "generation").items)
    code = read_task(samples / "humaneval.jsonl", "code").items
    solutions = ["    return a + b\n", "    return n % 2 == 0\n", "    return s[::-1]\n", "    return max(xs)\n"]
    res = score_code(code, [[s, "    return None\n"] for s in solutions], ks=(1, 2), limits=SandboxLimits(timeout_s=5))
    assert res.passed == [1, 1, 1, 1] and res.pass_at[1] == 0.5 and res.pass_at[2] == 1.0
