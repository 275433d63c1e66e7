"""`hybridlm compress report` as a user runs it: three files or nothing, one line per bad request."""

import json

SMALL = ["--eval-tokens", "200", "--window", "64", "--stride", "32", "--decode-tokens", "2", "--decode-runs", "1"]


def test_cli_writes_three_files_and_refuses_bad_variants(cli, tiny_llama_dir, tmp_path, assert_one_line_error):
    out = tmp_path / "report"
    code, stdout, _ = cli("compress", "report", str(tiny_llama_dir), "--only", "float32,w8-rtn", *SMALL, "--out", str(out))
    assert code == 0 and "| w8-rtn |" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "report.png"]
    assert [r["variant"] for r in json.loads((out / "report.json").read_text())["rows"]] == ["float32", "w8-rtn"]
    code, stdout, err = cli("compress", "report", str(tiny_llama_dir), "--only", "float32,w3-magic", "--out", str(tmp_path / "x"))
    assert_one_line_error(code, stdout, err, "w3-magic")
    assert not (tmp_path / "x").exists()
    code, stdout, err = cli("compress", "report", str(tiny_llama_dir), "--only", "gguf-q4_1", *SMALL, "--out", str(tmp_path / "y"))
    assert_one_line_error(code, stdout, err, "is not a GGUF file")
    assert not (tmp_path / "y").exists()
