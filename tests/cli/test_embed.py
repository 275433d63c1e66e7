"""`hybridlm embed`: vectors in a .npy or as JSON lines, clear one-line errors."""

import json

import numpy as np


def test_npy_output_one_unit_vector_per_line(cli, tmp_path):
    text = tmp_path / "s.txt"
    text.write_text("first sentence\nsecond one\n\nlast\n")
    out = tmp_path / "v.npy"
    code, stdout, err = cli("embed", "all-minilm-l6-v2", str(text), "--out", str(out), "--batch", "2", "--no-progress")
    assert code == 0 and stdout == ""
    vectors = np.load(out)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert "sentences/s" in err
    from hybridlm.rag.embed import load_sentence_encoder

    np.testing.assert_allclose(vectors, load_sentence_encoder().embed(["first sentence", "second one", "", "last"]),
                               atol=1e-5)


def test_json_lines_on_stdout(cli, tmp_path):
    text = tmp_path / "s.txt"
    text.write_text("a\nb\n")
    code, stdout, _ = cli("embed", "all-minilm-l6-v2", str(text), "--no-progress")
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and len(rows) == 2 and len(rows[0]) == 384


def test_bad_inputs(cli, tmp_path, assert_one_line_error):
    assert_one_line_error(*cli("embed", "all-minilm-l6-v2", str(tmp_path / "missing.txt")), "no such file")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_line_error(*cli("embed", "all-minilm-l6-v2", str(empty)), "no lines")
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"\x00\x01\x02abc")
    assert_one_line_error(*cli("embed", "all-minilm-l6-v2", str(binary)), "binary")
    text = tmp_path / "s.txt"
    text.write_text("x\n")
    assert_one_line_error(*cli("embed", "smollm2-135m", str(text)), "not an encoder")
    assert_one_line_error(*cli("embed", "all-minilm-l6-v2", str(text), "--out", str(tmp_path / "v.txt")), ".npy")
    assert_one_line_error(*cli("embed", "all-minilm-l6-v2", str(text), "--batch", "0"), "--batch")
    assert not (tmp_path / "v.txt").exists()
