"""Quantized model directories: save and load bit for bit, identical logits, a tied head stored once,
and clear errors for anything damaged."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hybridlm.checkpoints.errors import CheckpointError
from hybridlm.checkpoints.quantized import (MARKER, WEIGHTS, load_quantized, quantized_summary, save_quantized)
from hybridlm.checkpoints.registry import describe_source, load_model
from hybridlm.compress import Calibration, QuantizeConfig, quantize_model
from hybridlm.models.decoder import Decoder
from hybridlm.nn.quant import QuantizedWeight, QuantLinear
from hybridlm.presets import get_preset
from hybridlm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(pydoc_text):
    return Tokenizer.train_bpe([pydoc_text[:200_000]], vocab_size=1024)


def _quantized(preset, cfg, seed=0):
    torch.manual_seed(seed)
    model = Decoder(get_preset(preset)).eval()
    calib = Calibration(torch.randint(0, 1024, (2, 32), generator=torch.Generator().manual_seed(1)), "random")
    quantize_model(model, cfg, calib)
    return model


CASES = {
    "rtn-int4-asym-g32": ("llama-tiny", QuantizeConfig(method="rtn", group_size=32)),
    "rtn-int8-channel": ("qwen3-tiny", QuantizeConfig(method="rtn", bits=8)),
    "gptq-int4-sym-act-order": ("llama-tiny", QuantizeConfig(method="gptq", symmetric=True, act_order=True)),
    "awq-with-biases": ("gpt2-tiny", QuantizeConfig(method="awq")),
    "nf4": ("llama-tiny", QuantizeConfig(method="nf4")),
    "kmeans-per-row": ("qwen3-tiny", QuantizeConfig(method="kmeans")),
    "fp8-e5m2": ("llama-tiny", QuantizeConfig(method="fp8", fp8_format="e5m2")),
    "fp4-with-head": ("qwen3-tiny", QuantizeConfig(method="fp4", include_head=True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_save_load_round_trip_is_bit_for_bit(case, tokenizer, tmp_path):
    preset, cfg = CASES[case]
    model = _quantized(preset, cfg)
    save_quantized(model, tokenizer, tmp_path / "q", {"method": cfg.method})
    loaded = load_model(tmp_path / "q")
    assert loaded.format == "quantized"
    got = loaded.model
    ours, theirs = model.state_dict(), got.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]), k
    kinds = {n: type(m) for n, m in model.named_modules()}
    assert kinds == {n: type(m) for n, m in got.named_modules()}
    ids = torch.randint(0, 1024, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(got(ids), model(ids))
    assert loaded.tokenizer.encode("def f(x): return x") == tokenizer.encode("def f(x): return x")


def test_tied_head_is_stored_once_and_tied_again(tokenizer, tmp_path):
    model = _quantized("qwen3-tiny", QuantizeConfig(method="rtn"))
    save_quantized(model, tokenizer, tmp_path / "q", {})
    keys = load_file(str(tmp_path / "q" / WEIGHTS)).keys()
    assert "embed.weight" in keys and "lm_head.weight" not in keys
    loaded, _ = load_quantized(tmp_path / "q")
    assert type(loaded.lm_head) is nn.Linear and loaded.lm_head.weight is loaded.embed.weight


def test_quantized_head_keeps_the_embedding_float(tokenizer, tmp_path):
    model = _quantized("qwen3-tiny", QuantizeConfig(method="rtn", include_head=True))
    save_quantized(model, tokenizer, tmp_path / "q", {})
    loaded, _ = load_quantized(tmp_path / "q")
    assert isinstance(loaded.lm_head, QuantLinear) and torch.equal(loaded.embed.weight, model.embed.weight)


def test_summary_counts_the_stored_bytes(tokenizer, tmp_path):
    model = _quantized("llama-tiny", QuantizeConfig(method="rtn", bits=4, group_size=32))
    save_quantized(model, tokenizer, tmp_path / "q", {"method": "rtn", "bits": 4})
    s = quantized_summary(tmp_path / "q")
    weights = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantLinear))
    assert s["quantized_linears"] == 16 and s["quantized_bytes"] == weights // 2 + weights // 32 * 4
    assert s["quantized_float32_bytes"] == 4 * weights
    tensors = load_file(str(tmp_path / "q" / WEIGHTS))
    assert s["total_bytes"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert (tmp_path / "q" / WEIGHTS).stat().st_size < s["total_bytes"] * 1.01 + 64_000  # the file is that plus a header
    cfg, source = describe_source(tmp_path / "q")
    assert cfg == model.config and source == str(tmp_path / "q")


def test_w8a8_modules_round_trip(tokenizer, tmp_path):
    w8a8 = pytest.importorskip("hybridlm.nn.quant.w8a8")
    torch.manual_seed(0)
    model = Decoder(get_preset("llama-tiny")).eval()
    lin = model.blocks[0].mixer.wqkv
    scales = (lin.weight.abs().amax(1, keepdim=True) / 127).half()
    codes = torch.round(lin.weight / scales.float()).clamp(-127, 127).to(torch.int8)
    q = QuantizedWeight("int8", codes, scales, lin.in_features, lin.in_features)
    model.blocks[0].mixer.wqkv = w8a8.W8A8Linear(q, None, act="static", act_scale=torch.tensor(0.05),
                                                 input_scale=torch.rand(lin.in_features) + 0.5)
    save_quantized(model, tokenizer, tmp_path / "q", {})
    loaded, _ = load_quantized(tmp_path / "q")
    got = loaded.blocks[0].mixer.wqkv
    assert type(got) is w8a8.W8A8Linear and got.act == "static"
    assert torch.equal(got.act_scale, model.blocks[0].mixer.wqkv.act_scale)
    assert torch.equal(got.input_scale, model.blocks[0].mixer.wqkv.input_scale)


@pytest.fixture
def saved(tokenizer, tmp_path):
    model = _quantized("llama-tiny", QuantizeConfig(method="rtn"))
    save_quantized(model, tokenizer, tmp_path / "q", {})
    return tmp_path / "q"


def _edit_json(path, fn):
    meta = json.loads((path / MARKER).read_text())
    fn(meta)
    (path / MARKER).write_text(json.dumps(meta))


def _edit_tensors(path, fn):
    tensors = load_file(str(path / WEIGHTS))
    fn(tensors)
    save_file(tensors, str(path / WEIGHTS))


@pytest.mark.parametrize("damage, message", [
    (lambda p: _edit_tensors(p, lambda t: t.pop("blocks.2.mixer.wo.scales")), "blocks.2.mixer.wo.scales"),
    (lambda p: _edit_tensors(p, lambda t: t.pop("final_norm.weight")), "lacks ['final_norm.weight']"),
    (lambda p: _edit_tensors(p, lambda t: t.__setitem__("stray", torch.zeros(2))), "does not use: ['stray']"),
    (lambda p: _edit_tensors(p, lambda t: t.__setitem__("blocks.0.mixer.wo.codes", torch.zeros(3, 3, dtype=torch.uint8))),
     "codes must be"),
    (lambda p: _edit_json(p, lambda m: m["modules"]["blocks.0.mixer.wo"].__setitem__("fmt", "int3")), "unknown quantized format"),
    (lambda p: _edit_json(p, lambda m: m["modules"]["blocks.0.mixer.wo"].__setitem__("kind", "magic")), "kind 'magic'"),
    (lambda p: _edit_json(p, lambda m: m.__setitem__("version", 99)), "format version 99"),
    (lambda p: _edit_json(p, lambda m: m.__setitem__("format", "other")), "not a hybridlm quantized"),
    (lambda p: _edit_json(p, lambda m: m["config"].__setitem__("d_model", 96)), "does not match"),
    (lambda p: (p / WEIGHTS).write_bytes(b"garbage"), WEIGHTS),
    (lambda p: (p / MARKER).write_text("{not json"), "cannot read"),
])
def test_damaged_directories_are_one_clear_error(saved, damage, message):
    damage(saved)
    with pytest.raises(CheckpointError) as err:
        load_model(saved)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_saving_is_atomic_and_refuses_a_non_empty_directory(tokenizer, tmp_path):
    model = _quantized("llama-tiny", QuantizeConfig(method="rtn"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not empty"):
        save_quantized(model, tokenizer, tmp_path / "busy", {})

    class Broken:
        def to_hf_files(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_quantized(model, Broken(), tmp_path / "out", {})
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    save_quantized(model, tokenizer, tmp_path / "busy", {}, overwrite=True)
    assert (tmp_path / "busy" / MARKER).is_file() and not (tmp_path / "busy" / "file").exists()
