"""`hybridlm prune` and `hybridlm convert ... out.gguf` as a user runs them: what they print, what they
write, and one clear line (with nothing written) when the request is wrong."""

import json

import pytest
import torch

from hybridlm.checkpoints.hf import save_hf_checkpoint
from hybridlm.checkpoints.registry import load_model
from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset
from hybridlm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, pydoc_text):
    """A tiny Llama with a real BPE tokenizer, saved as an HF directory."""
    torch.manual_seed(0)
    model = Decoder(get_preset("llama-tiny", vocab_size=320, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                               d_ff=96, max_seq_len=256))
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_hf_checkpoint(model, path, "llama")
    Tokenizer.train_bpe([pydoc_text[:40_000]], vocab_size=300).to_hf_files(path)
    return path


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory, pydoc_text):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(pydoc_text[:20_000])
    return path


def test_prune_heads_writes_a_smaller_model_that_generates(cli, model_dir, calib_file, tmp_path):
    out = tmp_path / "pruned"
    code, stdout, err = cli("prune", str(model_dir), "--method", "heads", "--amount", "0.5", "--calib", str(calib_file),
                            "--calib-tokens", "512", "--calib-seq-len", "64", "--out", str(out))
    assert code == 0, err
    assert "n_heads" in stdout and "4 -> 2" in stdout and f"wrote {out}" in stdout
    loaded = load_model(out)
    assert (loaded.model.config.n_heads, loaded.model.config.n_kv_heads) == (2, 2)
    code, text, err = cli("generate", str(out), "def f(", "--max-new-tokens", "5", "--temperature", "0")
    assert code == 0 and text.strip(), err


def test_prune_json_reports_sparsity_and_recovery(cli, model_dir, calib_file, tmp_path):
    code, stdout, err = cli("prune", str(model_dir), "--method", "magnitude", "--amount", "0.4", "--scope", "global",
                            "--recover-steps", "3", "--calib", str(calib_file), "--calib-tokens", "512",
                            "--calib-seq-len", "64", "--out", str(tmp_path / "p"), "--json")
    assert code == 0, err
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["sparsity"] == pytest.approx(0.4, abs=1e-3)
    assert report["params_after"] == report["params_before"] > report["nonzero_after"]
    assert report["recovery"]["steps"] == 3
    assert json.loads((tmp_path / "p" / "pruning.json").read_text())["config"]["scope"] == "global"


@pytest.mark.parametrize("args, needles", [
    (["--method", "magnitude", "--amount", "1.5"], ["--amount", "strictly between 0 and 1"]),
    (["--method", "magnitude", "--amount", "0"], ["strictly between 0 and 1"]),
    (["--method", "neurons", "--amount", "0.5"], ["unknown pruning method 'neurons'"]),
    (["--method", "layers", "--amount", "0.9"], ["would remove all 2 layers"]),
    (["--method", "heads", "--amount", "0.9", "--head-unit", "group"], ["would remove all 2 KV groups"]),
    (["--method", "channels", "--amount", "0.5", "--calib", "/nonexistent/calib.txt"], ["not found"]),
])
def test_bad_requests_fail_with_one_line_and_write_nothing(cli, assert_one_line_error, model_dir, tmp_path, args, needles):
    out = tmp_path / "never"
    code, stdout, err = cli("prune", str(model_dir), *args, "--out", str(out))
    assert_one_line_error(code, stdout, err, *needles)
    assert not out.exists()


def test_prune_help_explains_every_method(cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("prune", "--help")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("magnitude", "2:4", "channels", "heads", "layers", "Wanda", "Taylor", "--recover-steps"):
        assert word in text


def test_convert_to_gguf_and_back(cli, model_dir, tmp_path):
    out = tmp_path / "m.gguf"
    code, stdout, err = cli("convert", str(model_dir), str(out), "--quant", "q8_0")
    assert code == 0 and out.is_file(), err
    assert "Q8_0" in err and "wrote" in err
    loaded = load_model(out)
    assert loaded.model.config.n_layers == 2
    code, stdout, err = cli("convert", str(model_dir), str(out), "--quant", "q8_0")
    assert code != 0 and "exists" in err  # kept unless --overwrite
    code, stdout, err = cli("convert", str(model_dir), str(tmp_path / "hf_dir"), "--quant", "q4_0")
    assert code != 0 and "--quant applies to GGUF output" in err


def test_convert_refuses_a_quantized_directory_it_cannot_map(cli, assert_one_line_error, model_dir, tmp_path):
    q = tmp_path / "q"
    code, _, err = cli("quantize", str(model_dir), "--method", "rtn", "--bits", "4", "--group-size", "32",
                       "--out", str(q))
    assert code == 0, err
    code, stdout, err = cli("convert", str(q), str(tmp_path / "q.gguf"), "--quant", "q4_0")
    assert_one_line_error(code, stdout, err, "stored as Q4_1", "--quant q4_1")
    assert not (tmp_path / "q.gguf").exists()
    code, _, err = cli("convert", str(q), str(tmp_path / "q.gguf"))  # its own type
    assert code == 0 and "Q4_1" in err and "copied from their quantized codes" in err
