"""`hybridlm quantize`: a quantized directory every command loads, and one clear line (non-zero exit,
nothing written) for every bad request."""

import json

import pytest
import torch

from hybridlm.checkpoints.hf import hf_arch_for, save_hf_checkpoint
from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset
from hybridlm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, pydoc_text):
    """A tiny Llama (random weights) with a real BPE tokenizer, saved as an HF directory."""
    torch.manual_seed(0)
    model = Decoder(get_preset("llama-tiny")).eval()
    path = tmp_path_factory.mktemp("tiny")
    save_hf_checkpoint(model, path, hf_arch_for(model.config), overwrite=True)
    Tokenizer.train_bpe([pydoc_text[:200_000]], vocab_size=1024).to_hf_files(path)
    return path


@pytest.fixture(scope="module")
def quantized_dir(tiny_dir, tmp_path_factory):
    from hybridlm.cli import main

    out = tmp_path_factory.mktemp("q") / "rtn"
    assert main(["quantize", str(tiny_dir), "--method", "rtn", "--group-size", "32", "--out", str(out)]) == 0
    return out


def test_quantize_then_info_and_generate(cli, quantized_dir):
    assert (quantized_dir / "quantized.json").is_file() and (quantized_dir / "model.safetensors").is_file()
    code, out, _ = cli("info", str(quantized_dir))
    assert code == 0 and "quantized       16 linears (rtn, 4-bit, group 32)" in out and "= 1/6.4" in out
    code, out, _ = cli("info", str(quantized_dir), "--json")
    info = json.loads(out)["quantized"]
    assert info["quantized_bytes"] * 6.3 < info["quantized_float32_bytes"] < info["quantized_bytes"] * 6.5
    code, out, err = cli("generate", str(quantized_dir), "def main", "--max-new-tokens", "4", "--temperature", "0",
                         "--ignore-eos")
    assert code == 0 and "decode 4 tokens" in err


@pytest.mark.parametrize("method, extra", [("gptq", ["--act-order", "--symmetric"]), ("awq", ["--bits", "8"]),
                                           ("nf4", []), ("kmeans", ["--calib-tokens", "256"]), ("fp8", []),
                                           ("fp4", [])])
def test_each_method_from_the_command_line(cli, tiny_dir, tmp_path, method, extra):
    calib = tmp_path / "calib.jsonl"
    calib.write_text("\n".join(json.dumps({"text": f"def f{i}(x):\n    return x * {i}\n"}) for i in range(200)))
    out = tmp_path / "q"
    code, stdout, _ = cli("quantize", str(tiny_dir), "--method", method, *extra, "--calib", str(calib),
                          "--calib-seq-len", "64", "--out", str(out), "--json")
    assert code == 0
    result = json.loads(stdout)
    assert result["method"] == method and result["linears"] == 16 and result["ratio"] < 0.3
    code, _, _ = cli("generate", str(out), "x", "--max-new-tokens", "2", "--temperature", "0", "--ignore-eos")
    assert code == 0


def test_help_text(capsys):
    from hybridlm.cli import main

    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    text = capsys.readouterr().out
    for word in ("gptq", "awq", "nf4", "kmeans", "fp8", "fp4", "--group-size", "--calib", "--act-order", "--damp",
                 "Q4_1", "held out"):
        assert word in text, word


def _bad(cli, assert_one_line_error, tmp_path, argv, *needles):
    out = tmp_path / "never"
    code, stdout, err = cli(*argv, "--out", str(out))
    assert_one_line_error(code, stdout, err, *needles)
    assert not out.exists()


@pytest.mark.parametrize("args, needles", [
    (["--method", "rtn", "--bits", "3"], ["rtn quantizes to 4 or 8 bits, not 3"]),
    (["--method", "nf4", "--bits", "8"], ["nf4 quantizes to 4 bits, not 8"]),
    (["--method", "rtn", "--bits", "8", "--asymmetric"], ["int8 is symmetric only"]),
    (["--method", "rtn", "--group-size", "48"], ["group size 48 is not a multiple of 32"]),
    (["--method", "rtn", "--group-size", "96"], ["group size 96 does not divide the 128 inputs"]),
    (["--method", "rtn", "--group-size", "big"], ["--group-size must be"]),
    (["--method", "rtn", "--act-order"], ["GPTQ option"]),
    (["--method", "int2"], ["unknown quantization method 'int2'", "gptq"]),
    (["--method", "gptq", "--calib-tokens", "0"], ["--calib-tokens must be at least 2"]),
])
def test_bad_requests(cli, assert_one_line_error, tiny_dir, tmp_path, args, needles):
    _bad(cli, assert_one_line_error, tmp_path, ["quantize", str(tiny_dir), *args], *needles)


def test_missing_and_empty_calibration_files(cli, assert_one_line_error, tiny_dir, tmp_path):
    _bad(cli, assert_one_line_error, tmp_path,
         ["quantize", str(tiny_dir), "--method", "gptq", "--calib", str(tmp_path / "nope.txt")], "not found")
    (tmp_path / "empty.txt").write_text("\n \n")
    _bad(cli, assert_one_line_error, tmp_path,
         ["quantize", str(tiny_dir), "--method", "awq", "--calib", str(tmp_path / "empty.txt")], "is empty")


def test_an_already_quantized_model(cli, assert_one_line_error, quantized_dir, tmp_path):
    _bad(cli, assert_one_line_error, tmp_path, ["quantize", str(quantized_dir), "--method", "gptq"],
         "already quantized")


def test_unknown_model_and_busy_output(cli, assert_one_line_error, tiny_dir, tmp_path):
    _bad(cli, assert_one_line_error, tmp_path, ["quantize", str(tmp_path / "nothing"), "--method", "rtn"], "unknown model")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("x")
    code, out, err = cli("quantize", str(tiny_dir), "--method", "rtn", "--out", str(busy))
    assert_one_line_error(code, out, err, "not empty", "--overwrite")
    assert (busy / "keep").read_text() == "x"
    code, _, _ = cli("quantize", str(tiny_dir), "--method", "rtn", "--out", str(busy), "--overwrite")
    assert code == 0 and not (busy / "keep").exists()
