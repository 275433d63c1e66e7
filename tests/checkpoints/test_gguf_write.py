"""GGUF out (checkpoints/gguf_write.py, gguf_blocks.py): blocks rounded as ggml rounds them,
quantized codes written bit for bit, round trips through our reader, and llama.cpp itself running
the files (slow; skipped where llama-cpp-python is not installed)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from hybridlm.checkpoints.convert import convert_to_gguf
from hybridlm.checkpoints.errors import CheckpointError
from hybridlm.checkpoints.gguf import load_gguf
from hybridlm.checkpoints.gguf_blocks import QUANTIZERS, gguf_type_of, to_gguf_blocks
from hybridlm.checkpoints.gguf_write import encode_tensors, gguf_metadata_fields, gguf_tokenizer_fields, write_gguf
from hybridlm.checkpoints.quantized import save_quantized
from hybridlm.compress import Calibration, QuantizeConfig, quantize_model
from hybridlm.models.decoder import Decoder
from hybridlm.nn.quant import QuantLinear, dequantize_ref
from hybridlm.presets import get_preset
from hybridlm.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).parents[2]))
from bench.llama_peer import find_llama_python, run_peer  # noqa: E402

VOCAB = 320


def _weights(seed=0, rows=16, cols=128):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    w[0, :32] = 0  # an all-zero block: d = 0
    w[1, :32] = 0.5
    w[1, 7] = -0.5  # equal magnitudes of both signs: the first wins the Q4_0 maximum
    w[2] *= 1e-3
    return w


@pytest.mark.parametrize("qtype", list(QUANTIZERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_float_blocks_round_as_ggml_reference_bit_for_bit(qtype, seed):
    w = _weights(seed)
    ours, got_type = to_gguf_blocks(QUANTIZERS[qtype](w))
    assert got_type == qtype
    np.testing.assert_array_equal(ours, gguf_quantize(w.numpy(), qtype))


@pytest.mark.parametrize("bits, symmetric, qtype", [(4, True, Q.Q4_0), (4, False, Q.Q4_1), (8, True, Q.Q8_0)])
def test_quantizer_codes_are_gguf_blocks_and_gguf_dequantizes_them_to_our_weights(bits, symmetric, qtype):
    model = Decoder(get_preset("llama-tiny", vocab_size=VOCAB, n_layers=1))
    quantize_model(model, QuantizeConfig("rtn", bits=bits, group_size=32, symmetric=symmetric))
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            blocks, got = to_gguf_blocks(m.weight_q, name)
            assert got == qtype
            np.testing.assert_array_equal(gguf_dequantize(blocks, qtype), dequantize_ref(m.weight_q).numpy())


def test_weights_that_are_no_gguf_block_are_refused():
    model = Decoder(get_preset("llama-tiny", vocab_size=VOCAB, n_layers=1))
    quantize_model(model, QuantizeConfig("rtn", bits=4, group_size=64))
    with pytest.raises(CheckpointError, match="group size 64.*--group-size 32"):
        gguf_type_of(model.blocks[0].mixer.wqkv.weight_q, "wqkv")
    model = Decoder(get_preset("llama-tiny", vocab_size=VOCAB, n_layers=1))
    quantize_model(model, QuantizeConfig("nf4", group_size=32))
    with pytest.raises(CheckpointError, match="lut4, which has no GGUF block type"):
        gguf_type_of(model.blocks[0].mixer.wqkv.weight_q, "wqkv")


# -- tiny models ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(pydoc_text):
    return Tokenizer.train_bpe([pydoc_text[:50_000]], vocab_size=300, special_tokens=("<|endoftext|>", "<|im_end|>"))


def tiny(tie=True, seed=0, **overrides) -> Decoder:
    torch.manual_seed(seed)
    shape = dict(vocab_size=VOCAB, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=96, tie_embeddings=tie)
    cfg = get_preset("llama-tiny", **(shape | overrides))
    return Decoder(cfg).eval()


def ids(n=24, seed=3):
    return torch.randint(0, 300, (2, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tie", [True, False])
def test_float_model_round_trips_through_our_reader(tmp_path, tokenizer, tie):
    model = tiny(tie, rope_scaling="llama3", rope_factor=8.0, rope_original_max_seq_len=64)
    x = ids()
    with torch.no_grad():
        want = model(x)
        write_gguf(model, tokenizer, tmp_path / "m.gguf", "f32")
        back, back_tok = load_gguf(tmp_path / "m.gguf")
        torch.testing.assert_close(back(x), want, rtol=0, atol=0)  # f32: the same numbers
        ids_from_tokenizer = dict(bos_token_id=None, eos_token_id=tokenizer.token_to_id("<|endoftext|>"))
        assert back.config == model.config.replace(**ids_from_tokenizer)  # special ids come from the tokenizer
        write_gguf(model, tokenizer, tmp_path / "h.gguf", "f16")
        torch.testing.assert_close(load_gguf(tmp_path / "h.gguf")[0](x), want, rtol=0, atol=2e-3 * want.abs().max().item())
    text = "def f(x):\n    return x ** 2  # squares"
    assert back_tok.encode(text) == tokenizer.encode(text)
    assert back_tok.eos_token_ids == tokenizer.eos_token_ids


@pytest.mark.parametrize("quant", ["q8_0", "q4_0", "q4_1"])
def test_float_model_written_quantized_holds_ggml_rounded_weights(tmp_path, tokenizer, quant):
    model = tiny(tie=False)
    write_gguf(model, tokenizer, tmp_path / "m.gguf", quant)
    back, _ = load_gguf(tmp_path / "m.gguf")
    qtype = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1}[quant]
    expect_w = dequantize_ref(QUANTIZERS[qtype](model.blocks[1].mixer.w_out.weight))
    torch.testing.assert_close(back.blocks[1].mixer.w_out.weight, expect_w, rtol=0, atol=0)
    edge = dequantize_ref(QUANTIZERS[Q.Q8_0](model.lm_head.weight))  # head and embedding: Q8_0
    torch.testing.assert_close(back.lm_head.weight, edge, rtol=0, atol=0)
    types = {t.name: t.tensor_type for t in GGUFReader(tmp_path / "m.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == qtype and types["token_embd.weight"] == Q.Q8_0
    assert types["blk.0.attn_norm.weight"] == Q.F32


def _calibration(n=4, length=32):
    return Calibration(torch.randint(0, 300, (n, length), generator=torch.Generator().manual_seed(9)), "random")


@pytest.mark.parametrize("method, bits, symmetric", [("rtn", 4, True), ("gptq", 4, False), ("awq", 4, False),
                                                     ("rtn", 8, True)])
def test_quantized_model_is_written_bit_for_bit(tmp_path, tokenizer, method, bits, symmetric):
    model = tiny(tie=True)
    calib = _calibration() if method != "rtn" else None
    quantize_model(model, QuantizeConfig(method, bits=bits, group_size=32, symmetric=symmetric), calib)
    save_quantized(model, tokenizer, tmp_path / "q", {"method": method})
    summary = convert_to_gguf(str(tmp_path / "q"), tmp_path / "q.gguf")  # the type is the model's own
    assert summary.quant == {(4, True): "q4_0", (4, False): "q4_1", (8, True): "q8_0"}[(bits, symmetric)]
    assert summary.copied_blocks == 7 * 2  # every block linear of both layers
    back, _ = load_gguf(tmp_path / "q.gguf")
    ours = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    for name, m in ours.items():  # bit-exact weights: the reader decodes exactly what was quantized
        assert torch.equal(back.get_submodule(name).weight, dequantize_ref(m.weight_q)), name
    for i in range(0, 4, 2):  # AWQ folds its scales into the norms: those travel too
        assert torch.equal(back.blocks[i].norm.weight, model.blocks[i].norm.weight)
    with torch.no_grad():  # the tied embedding is stored Q8_0, as llama.cpp's quantizer stores it
        model.embed.weight.copy_(dequantize_ref(QUANTIZERS[Q.Q8_0](model.embed.weight)))
        x = ids()
        torch.testing.assert_close(back(x), model(x))


def test_quantized_model_refuses_another_type_and_other_group_sizes(tmp_path, tokenizer):
    model = tiny()
    quantize_model(model, QuantizeConfig("rtn", bits=4, group_size=32, symmetric=False))
    with pytest.raises(CheckpointError, match="stored as Q4_1.*--quant q4_1"):
        write_gguf(model, tokenizer, tmp_path / "m.gguf", "q4_0")
    assert not (tmp_path / "m.gguf").exists()
    write_gguf(model, tokenizer, tmp_path / "f.gguf", "f32")  # dequantized floats are always possible
    model = tiny(d_ff=128)
    quantize_model(model, QuantizeConfig("rtn", bits=4, group_size=64))
    with pytest.raises(CheckpointError, match="group size 64"):
        write_gguf(model, tokenizer, tmp_path / "m.gguf", "q4_1")
    assert list(tmp_path.iterdir()) == [tmp_path / "f.gguf"]  # nothing half-written


def test_models_llama_cpp_cannot_run_are_refused(tmp_path, tokenizer):
    model = Decoder(get_preset("gpt2-tiny", vocab_size=VOCAB, n_layers=1))
    with pytest.raises(CheckpointError, match="cannot be written as a llama.cpp Llama GGUF.*position"):
        write_gguf(model, tokenizer, tmp_path / "m.gguf", "f32")
    pruned_d_ff = tiny(d_ff=40)  # 40 inputs to ffn_down: no whole blocks of 32
    with pytest.raises(CheckpointError, match="ffn_down.weight has 40 inputs.*f16"):
        write_gguf(pruned_d_ff, tokenizer, tmp_path / "m.gguf", "q4_0")
    assert not (tmp_path / "m.gguf").exists()


def test_existing_file_is_kept_without_overwrite(tmp_path, tokenizer):
    (tmp_path / "m.gguf").write_text("keep me")
    with pytest.raises(CheckpointError, match="exists"):
        write_gguf(tiny(), tokenizer, tmp_path / "m.gguf", "f32")
    assert (tmp_path / "m.gguf").read_text() == "keep me"
    write_gguf(tiny(), tokenizer, tmp_path / "m.gguf", "f32", overwrite=True)
    assert load_gguf(tmp_path / "m.gguf")[0].config.d_model == 64


# -- the real model -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return load_gguf(smollm2_gguf)


def test_smollm2_tokenizer_metadata_is_rebuilt_exactly(smollm2, smollm2_gguf):
    model, tok = smollm2
    original = gguf_metadata_fields(smollm2_gguf)
    rebuilt = gguf_tokenizer_fields(tok, model.config.vocab_size)
    assert set(rebuilt) == set(original)
    for key, (value, vtype, sub) in rebuilt.items():
        assert (value, vtype, sub) == original[key], key


def test_smollm2_requantized_to_q4_1_reproduces_the_original_blocks(smollm2, smollm2_gguf):
    """The file's Q4_1 weights, dequantized and rounded again with ggml's Q4_1 rounding, give the
    original bytes back (checked on the embedding and the first two layers)."""
    model, _ = smollm2
    original = {t.name: t for t in GGUFReader(smollm2_gguf).tensors}
    checked = 0
    for name, array, qtype, _ in encode_tensors(model, "q4_1"):
        if not (name == "token_embd.weight" or name.startswith(("blk.0.", "blk.1."))):
            continue
        assert qtype == original[name].tensor_type, name
        assert np.array_equal(array.view(np.uint8).reshape(-1), np.asarray(original[name].data).view(np.uint8).reshape(-1)), name
        checked += 1
        if checked == 19:
            break
    assert checked == 19


# -- llama.cpp itself ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_python():
    python = find_llama_python()
    if python is None:
        pytest.skip("llama-cpp-python is not importable here or in /work/llamavenv ($HYBRIDLM_LLAMA_PYTHON)")
    return python


def _llama_logits(python, path, token_ids, tmp_path):
    out = tmp_path / "logits.npy"
    run_peer(python, "logits", "--model", path, "--ids", ",".join(map(str, token_ids)), "--out", out, timeout=600)
    return torch.from_numpy(np.load(out))


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["f32", "q8_0", "q4_0"])
def test_llama_cpp_runs_our_file_and_agrees_with_our_logits(tmp_path, tokenizer, llama_python, quant):
    torch.manual_seed(0)
    model = tiny(tie=True)
    with torch.no_grad():  # weights large enough that the logits are far from uniform
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    write_gguf(model, tokenizer, tmp_path / "m.gguf", quant)
    back, _ = load_gguf(tmp_path / "m.gguf")
    prompt = tokenizer.encode("Return the sum of two numbers: def add(a, b): return a + b")
    theirs = _llama_logits(llama_python, tmp_path / "m.gguf", prompt, tmp_path)
    with torch.no_grad():
        ours = back(torch.tensor([prompt]))[0]
    scale = ours.abs().max().item()
    # f32: llama.cpp keeps K and V in float16; quantized files: it also rounds activations to int8 blocks
    tol = {"f32": 0.01, "q8_0": 0.03, "q4_0": 0.05}[quant]
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().max().item() < tol * scale
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item() >= 0.9


@pytest.mark.slow
def test_llama_cpp_runs_smollm2_exported_from_a_quantized_directory(tmp_path, smollm2, llama_python):
    model, tok = smollm2
    quantize_model(model, QuantizeConfig("rtn", bits=4, group_size=32, symmetric=True))
    write_gguf(model, tok, tmp_path / "s.gguf")
    prompt = tok.encode("The Python interpreter reads a program from a file and")
    theirs = _llama_logits(llama_python, tmp_path / "s.gguf", prompt, tmp_path)
    with torch.no_grad():
        ours = model(torch.tensor([prompt]))[0]
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item() >= 0.8
    assert (theirs - ours).abs().mean().item() < 0.05 * ours.std().item() * 10


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["q4_0", "q4_1", "q8_0"])
def test_our_ggml_rounding_writes_what_llama_cpp_quantizer_writes(tmp_path, tokenizer, llama_python, quant):
    model = tiny(tie=True, d_model=64, d_ff=128)
    write_gguf(model, tokenizer, tmp_path / "f32.gguf", "f32")
    run_peer(llama_python, "quantize", "--model", tmp_path / "f32.gguf", "--out", tmp_path / "theirs.gguf",
             "--type", quant, timeout=600)
    write_gguf(model, tokenizer, tmp_path / "ours.gguf", quant)
    ours = {t.name: t for t in GGUFReader(tmp_path / "ours.gguf").tensors}
    theirs = {t.name: t for t in GGUFReader(tmp_path / "theirs.gguf").tensors}
    assert set(ours) == set(theirs)
    for name, t in ours.items():
        assert t.tensor_type == theirs[name].tensor_type, name
        assert np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(theirs[name].data).view(np.uint8)), name


@pytest.mark.slow
def test_llama_cpp_perplexity_of_our_file_matches_ours(tmp_path, tokenizer, llama_python, pydoc_text):
    import json

    from hybridlm.eval.perplexity import perplexity, window_plan

    model = tiny(tie=False)
    write_gguf(model, tokenizer, tmp_path / "m.gguf", "f32")
    token_ids = tokenizer.encode(pydoc_text[:3000])[:300]
    plan = window_plan(len(token_ids), 128, 64)
    (tmp_path / "ids.json").write_text(json.dumps({"ids": token_ids, "plan": plan}))
    theirs = run_peer(llama_python, "perplexity", "--model", tmp_path / "m.gguf", "--ids-file", tmp_path / "ids.json",
                      timeout=600)
    ours = perplexity(model, token_ids, 128, 64)
    assert theirs["tokens"] == ours.tokens
    assert theirs["perplexity"] == pytest.approx(ours.perplexity, rel=2e-3)


@pytest.mark.slow
def test_llama_cpp_runs_a_head_pruned_model(tmp_path, tokenizer, llama_python):
    """Pruned heads leave head_dim != d_model / n_heads: the file says so (attention.key_length)."""
    from hybridlm.compress.prune import PruneConfig, prune_model

    model = tiny(tie=True, n_heads=6, n_kv_heads=2, head_dim=8)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    pruned, _ = prune_model(model, PruneConfig("heads", amount=0.34, importance="weight"))
    assert pruned.config.n_heads * pruned.config.head_dim != pruned.config.d_model
    write_gguf(pruned, tokenizer, tmp_path / "p.gguf", "f32")
    prompt = tokenizer.encode("class Point: pass")
    theirs = _llama_logits(llama_python, tmp_path / "p.gguf", prompt, tmp_path)
    with torch.no_grad():
        ours = pruned(torch.tensor([prompt]))[0]
    assert (theirs - ours).abs().max().item() < 0.01 * ours.abs().max().item()
