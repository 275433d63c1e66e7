"""`hybridlm eval` end to end on a tiny HF directory: JSON keys and provenance, several models side
by side, bad input as one error line with nothing written, perplexity, generation, code, needle
heatmap, contamination, the harness form and --help."""

import json

import pytest

from hybridlm.cli import main
from hybridlm.checkpoints.registry import load_model
from hybridlm.eval.perplexity import text_perplexity
from tests.eval.eval_helpers import corpus_lines, write_mc


@pytest.fixture
def cli(capsys):
    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def one_line_error(code, out, err, *needles):
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hybridlm: error:") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0]


def test_multiple_choice_json_and_side_by_side(cli, tiny_hf_dir, tmp_path):
    write_mc(tmp_path / "mc.jsonl", n=6)
    code, out, _ = cli("eval", tiny_hf_dir, "--task", "multiple-choice", "--file", tmp_path / "mc.jsonl", "--json",
                       "--no-progress", "--out", tmp_path / "res.json")
    assert code == 0
    r = json.loads(out)
    for key in ("accuracy", "accuracy_norm", "model", "config_hash", "task_sha256", "seed", "hybridlm_version"):
        assert key in r
    assert r["items"] == 6 and 0.0 <= r["accuracy"] <= 1.0
    assert json.loads((tmp_path / "res.json").read_text())[0]["accuracy"] == r["accuracy"]
    code, out, _ = cli("eval", tiny_hf_dir, tiny_hf_dir, "--task", "multiple-choice", "--file", tmp_path / "mc.jsonl",
                       "--no-progress", "--impl", "ref")
    rows = [l for l in out.splitlines() if l.startswith(f"| {tiny_hf_dir.name}")]
    assert code == 0 and len(rows) == 2 and f"{r['accuracy']:.4f}" in rows[0]


def test_bad_lines_stop_the_run_and_nothing_is_written(cli, tiny_hf_dir, tmp_path):
    rows = write_mc(tmp_path / "mc.jsonl", n=3)
    lines = (tmp_path / "mc.jsonl").read_text().splitlines()
    lines.insert(1, "{broken")
    lines.append(json.dumps({**rows[0], "answer": 9}))
    (tmp_path / "mc.jsonl").write_text("\n".join(lines) + "\n")
    out_file = tmp_path / "res.json"
    one_line_error(*cli("eval", tiny_hf_dir, "--task", "multiple-choice", "--file", tmp_path / "mc.jsonl", "--out",
                        out_file, "--no-progress"), "line 2", "line 5", "answer index 9 is out of range", "--skip-bad")
    assert not out_file.exists()
    code, out, err = cli("eval", tiny_hf_dir, "--task", "multiple-choice", "--file", tmp_path / "mc.jsonl", "--json",
                         "--skip-bad", "--no-progress")
    assert code == 0 and json.loads(out)["items"] == 3 and "skipped 2 bad line(s): [2, 5]" in err


def test_perplexity_on_a_text_file_and_a_too_long_window(cli, tiny_hf_dir, tmp_path):
    text = " ".join(corpus_lines(30, seed=5))
    (tmp_path / "t.txt").write_text(text)
    code, out, _ = cli("eval", tiny_hf_dir, "--task", "perplexity", "--file", tmp_path / "t.txt", "--window", 64,
                       "--stride", 32, "--json", "--no-progress")
    lm = load_model(tiny_hf_dir)
    expected = text_perplexity(lm.model, lm.tokenizer, text, 64, 32)
    r = json.loads(out)
    assert code == 0 and r["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)
    assert r["tokens"] == expected.tokens and r["bits_per_byte"] == pytest.approx(expected.bits_per_byte)
    one_line_error(*cli("eval", tiny_hf_dir, "--task", "perplexity", "--file", tmp_path / "t.txt", "--window", 4096,
                        "--no-progress"), "longer than the model's context")
    one_line_error(*cli("eval", tiny_hf_dir, "--task", "perplexity", "--file", tmp_path / "nope.txt", "--no-progress"),
                   "does not exist")


def test_a_context_longer_than_the_model_is_an_error(cli, tiny_hf_dir, tmp_path):
    (tmp_path / "mc.jsonl").write_text(json.dumps({"context": "red " * 600, "choices": ["a", "b"], "answer": 0}) + "\n")
    one_line_error(*cli("eval", tiny_hf_dir, "--task", "multiple-choice", "--file", tmp_path / "mc.jsonl",
                        "--no-progress"), "longer than the model's context (512)")


def test_generation_code_and_needle(cli, tiny_hf_dir, tmp_path):
    (tmp_path / "g.jsonl").write_text(json.dumps({"prompt": "red green", "answer": "#### 7"}) + "\n")
    code, out, _ = cli("eval", tiny_hf_dir, "--task", "generation", "--file", tmp_path / "g.jsonl", "--max-new-tokens",
                       6, "--stop", ".", "--json", "--no-progress")
    r = json.loads(out)
    assert code == 0 and r["exact_match"] == 0.0 and "." not in r["outputs"][0]["output"]
    (tmp_path / "c.jsonl").write_text(json.dumps({"task_id": "t", "prompt": "def f():\n", "entry_point": "f",
                                                  "test": "def check(c):\n    assert c() == 1\n"}) + "\n")
    code, out, _ = cli("eval", tiny_hf_dir, "--task", "code", "--file", tmp_path / "c.jsonl", "--max-new-tokens", 4,
                       "--samples", 2, "--temperature", 1.0, "--k", "1,2", "--timeout", 3, "--json", "--no-progress")
    r = json.loads(out)
    assert code == 0 and r["pass@1"] == 0.0 and r["pass@2"] == 0.0 and len(r["statuses"]["t"]) == 2
    png = tmp_path / "needle.png"
    code, out, err = cli("eval", tiny_hf_dir, "--task", "needle", "--lengths", "128,192", "--depths", "0,1",
                         "--heatmap", png, "--json", "--no-progress")
    r = json.loads(out)
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    assert r["lengths"] == [128, 192] and len(r["accuracy_grid"]) == 2 and len(r["accuracy_grid"][0]) == 2


def test_contamination_cli(cli, tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.txt").write_text("alpha beta gamma delta epsilon zeta eta theta iota kappa\n")
    (tmp_path / "t.jsonl").write_text(
        json.dumps({"context": "Alpha, beta gamma delta epsilon zeta eta", "choices": ["x", "y"], "answer": 0}) + "\n"
        + json.dumps({"context": "something else entirely here for sure", "choices": ["x", "y"], "answer": 0}) + "\n")
    code, out, _ = cli("eval", "contamination", "--train", tmp_path / "train", "--task", tmp_path / "t.jsonl",
                       "--n", 5, "--json")
    r = json.loads(out)
    assert code == 0 and r["contaminated_items"] == 1 and r["contaminated"][0]["line"] == 1
    one_line_error(*cli("eval", "contamination", "--train", tmp_path / "nope", "--task", tmp_path / "t.jsonl"),
                   "does not exist")


def test_help_explains_every_form(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for word in ("perplexity", "multiple-choice", "generation", "code", "needle", "eval harness",
                 "eval contamination", "--skip-bad", "pass@k"):
        assert word in out


@pytest.mark.slow  # lm-eval's own CLI, ~20 s
def test_harness_form_runs_lm_eval_with_the_hybridlm_model(cli, tiny_hf_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    write_mc(tmp_path / "mc.jsonl", n=4)
    (tmp_path / "cli_mc.yaml").write_text(
        f"task: cli_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{context}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{answer}}\"\nmetric_list:\n  - metric: acc\n")
    code, out, _ = cli("eval", "harness", "--tasks", "cli_mc", "--include_path", tmp_path,
                       "--model_args", f"pretrained={tiny_hf_dir}", "--output_path", tmp_path / "out")
    assert code == 0 and "cli_mc" in out and "acc" in out
    assert list((tmp_path / "out").rglob("results_*.json"))


def test_compare_needle_runs_the_probe_on_both_models(cli, tiny_hf_dir, tmp_path):
    code, out, err = cli("compare", tiny_hf_dir, tiny_hf_dir, "--needle", "--contexts", "128", "--out", tmp_path,
                         "--no-progress")
    assert code == 0 and (tmp_path / "needle.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((tmp_path / "needle.json").read_text())) == 2 and "needle_accuracy" in out
    one_line_error(*cli("compare", "compare-transformer", "compare-hybrid", "--needle", "--out", tmp_path / "x"),
                   "is a preset", "cannot retrieve a needle")


def test_perplexity_on_a_prepared_shard_directory(cli, tiny_hf_dir, tmp_path):
    import numpy as np

    from hybridlm.data.shards import token_dtype, write_manifest, write_split
    from hybridlm.eval.perplexity import perplexity

    lm = load_model(tiny_hf_dir)
    ids = lm.tokenizer.encode(" ".join(corpus_lines(20, seed=7)))
    vocab = lm.tokenizer.vocab_size
    entry = write_split(tmp_path, "val", [np.array(ids, dtype=token_dtype(vocab))], vocab)
    write_manifest(tmp_path, {"dtype": str(token_dtype(vocab)), "vocab_size": vocab, "splits": {"val": entry}})
    code, out, _ = cli("eval", tiny_hf_dir, "--task", "perplexity", "--file", tmp_path, "--window", 48, "--json",
                       "--no-progress")
    expected = perplexity(lm.model, ids, 48)
    r = json.loads(out)
    assert code == 0 and r["tokens"] == expected.tokens and r["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)
    one_line_error(*cli("eval", tiny_hf_dir, "--task", "perplexity", "--file", tmp_path, "--split", "train",
                        "--no-progress"), "no split 'train'")


def test_chat_option_wraps_the_prompt_in_the_template(tiny_hf_dir):
    from hybridlm.eval.generation_tasks import prompt_text
    from hybridlm.tokenizer import Tokenizer

    plain = Tokenizer.from_file(tiny_hf_dir)
    chat = Tokenizer(plain.backend, eos_token="<|endoftext|>",
                     chat_template="{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                                   "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert prompt_text(chat, "2+2?", chat=True) == "<user>2+2?<assistant>"
    assert prompt_text(plain, "2+2?", chat=False) == "2+2?"
    with pytest.raises(ValueError, match="no chat template"):
        prompt_text(plain, "2+2?", chat=True)
