"""`hybridlm data prepare` and `hybridlm tokenizer train` as users script them."""

import json

import pytest

from hybridlm.cli import main
from hybridlm.data.shards import TokenShards


@pytest.fixture
def folder(tmp_path):
    from pydoc_data.topics import topics

    docs = tmp_path / "docs"
    docs.mkdir()
    for name in sorted(topics)[:20]:
        (docs / f"{name}.txt").write_text(topics[name])
    return docs


def test_default_corpus_on_a_capped_subset(cli, tmp_path):
    out = tmp_path / "data"
    code, stdout, err = cli("data", "prepare", "--default", "--max-docs", "6", "--out", str(out))
    assert code == 0 and stdout == ""
    assert "extract: kept" in err and "near_dedup: kept" in err and "wrote" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["sources"]) == {"prose", "code"}
    assert manifest["stages"][0]["in"] == 12
    assert manifest["tokenizer"]["spec"] == "smollm2-135m" and manifest["vocab_size"] == 49152
    assert manifest["dtype"] == "uint16" and len(TokenShards(out, "train")) > 1000


def test_train_a_tokenizer_then_prepare_with_it(cli, tmp_path, folder):
    tok = tmp_path / "tok.json"
    code, _, err = cli("tokenizer", "train", str(folder), "--vocab-size", "400", "--out", str(tok), "--quiet")
    assert code == 0 and tok.is_file(), err
    out = tmp_path / "data"
    code, _, err = cli("data", "prepare", f"manual={folder}", "--tokenizer", str(tok), "--out", str(out),
                       "--val-fraction", "0.1", "--quiet")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["vocab_size"] == 400 and list(manifest["sources"]) == ["manual"]
    # a prepared dataset is also something to train a tokenizer on
    code, _, err = cli("tokenizer", "train", str(out), "--vocab-size", "300", "--out", str(tmp_path / "t2"),
                       "--quiet")
    assert code == 0 and (tmp_path / "t2" / "tokenizer_config.json").is_file(), err


@pytest.mark.parametrize("argv, needle", [
    (["--mix", "poetry=1"], "unknown source 'poetry'"),
    (["--mix", "docs=lots"], "SOURCE=WEIGHT"),
    (["--mix-total", "double"], "unknown mix total"),
    (["--max-docs", "many"], "--max-docs"),
    (["--filter", "min_wordz=3"], "min_words"),
    (["--jaccard", "1.5"], "threshold"),
    (["--val-fraction", "1"], "--val-fraction"),
    (["--tokenizer", "no-such-tokenizer"], "no-such-tokenizer"),
    (["--decontaminate", "absent.jsonl"], "absent.jsonl"),
])
def test_bad_option_values_are_one_line_errors(cli, tmp_path, folder, argv, needle, assert_one_line_error):
    out = tmp_path / "data"
    assert_one_line_error(*cli("data", "prepare", str(folder), "--out", str(out), "--quiet", *argv), needle)
    assert not out.exists()


def test_bad_inputs_are_one_line_errors(cli, tmp_path, folder, assert_one_line_error):
    assert_one_line_error(*cli("data", "prepare", str(tmp_path / "absent"), "--out", str(tmp_path / "o")),
                          "absent", "does not exist")
    assert_one_line_error(*cli("data", "prepare", "--out", str(tmp_path / "o")), "--default")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert_one_line_error(*cli("data", "prepare", str(folder), "--out", str(tmp_path / "full")), "not empty")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert_one_line_error(*cli("tokenizer", "train", str(folder), "--vocab-size", "100", "--out",
                               str(tmp_path / "t.json")), "--vocab-size")
    assert_one_line_error(*cli("tokenizer", "train", str(tmp_path / "absent"), "--vocab-size", "500", "--out",
                               str(tmp_path / "t.json")), "does not exist")
    assert not list(tmp_path.glob("*.json")) and not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["data", "prepare"], ["tokenizer", "train"]])
def test_subcommands_explain_themselves(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert len(out) > 1000 and "--out" in out and "examples:" in out


def test_groups_are_listed(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "data" in out and "tokenizer" in out
