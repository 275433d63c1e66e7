"""GGUF weights kept quantized (`load_gguf(..., keep_quantized=True)`): the blocks become QuantLinear
modules that hold exactly the values the dequantizing loader produces, fused rows and RoPE
permutation included; the real SmolLM2 file keeps its float32 logits and greedy tokens in exact
mode, and its perplexity in fast mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants

from hybridlm.checkpoints.gguf import load_gguf
from hybridlm.checkpoints.gguf_quantized import concat_rows, to_quantized
from hybridlm.kernels import qmatmul
from hybridlm.nn.quant import QuantLinear, dequantize_ref, set_quant_modes
from tests.checkpoints.test_gguf import gguf_tensors, random_blocks, random_model, tiny_config, write_gguf

LINEARS = ("mixer.wqkv", "mixer.wo", "mixer.w_in", "mixer.w_out")


def quantized_types(name: str, array: np.ndarray) -> Q:
    """Norms F32; attention Q4_0, MLP Q4_1, embeddings (and a separate head) Q8_0."""
    if array.ndim == 1:
        return Q.F32
    if ".attn_" in name:
        return Q.Q4_0
    return Q.Q4_1 if ".ffn_" in name else Q.Q8_0


def linears(model) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.named_modules() if name.endswith(LINEARS) or name == "lm_head"}


def assert_same_weights(quantized, floating) -> None:
    """Every QuantLinear of `quantized` dequantizes to the float model's weight, bit for bit."""
    for name, m in linears(quantized).items():
        assert isinstance(m, QuantLinear), name
        assert torch.equal(dequantize_ref(m.weight_q), floating.get_submodule(name).weight), name


@pytest.mark.parametrize("tie", [True, False])
def test_kept_blocks_are_the_dequantized_weights(tmp_path, tie):
    ref = random_model(tiny_config(tie_embeddings=tie))
    write_gguf(tmp_path / "q.gguf", ref.config, gguf_tensors(ref), types=quantized_types)
    floating, _ = load_gguf(tmp_path / "q.gguf")
    quantized, _ = load_gguf(tmp_path / "q.gguf", keep_quantized=True)
    assert_same_weights(quantized, floating)
    blocks = quantized.blocks
    assert (blocks[0].mixer.wqkv.fmt, blocks[0].mixer.wqkv.offsets) == ("int4", None)  # Q4_0: symmetric
    assert blocks[1].mixer.w_in.offsets is not None and quantized.lm_head.fmt == "int8"  # Q4_1, Q8_0
    # the embedding lookup keeps its float table (the head's own copy is the quantized one)
    assert type(quantized.embed) is torch.nn.Embedding
    assert torch.equal(quantized.embed.weight, floating.embed.weight)
    assert quantized.lm_head.kernel == ("native" if qmatmul.available() else "ref")
    ids = torch.randint(0, ref.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = floating(ids), quantized(ids)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * want.abs().max().item())


def test_q4_k_blocks_are_kept_bit_for_bit(tmp_path, monkeypatch):
    """Q4_K (8 sub-blocks of 32 with 6-bit scales and mins) becomes int4 asym with float32 scales."""
    cfg = tiny_config(d_model=256, n_heads=4, n_kv_heads=2, d_ff=256)
    ref = random_model(cfg)
    real_quantize = quants.quantize

    def quantize(array, qtype):  # gguf cannot quantize Q4_K: random blocks stand for it
        if qtype != Q.Q4_K:
            return real_quantize(array, qtype)
        return random_blocks(Q.Q4_K, array.shape[0], array.shape[1] // 256, seed=array.shape[0])

    monkeypatch.setattr(quants, "quantize", quantize)
    types = lambda name, a: Q.Q4_K if ".ffn_" in name and a.ndim == 2 else quantized_types(name, a)  # noqa: E731
    write_gguf(tmp_path / "k.gguf", cfg, gguf_tensors(ref), types=types)
    floating, _ = load_gguf(tmp_path / "k.gguf")
    quantized, _ = load_gguf(tmp_path / "k.gguf", keep_quantized=True)
    assert_same_weights(quantized, floating)
    w_in = quantized.blocks[1].mixer.w_in
    assert w_in.scales.dtype == torch.float32 and w_in.offsets is not None and w_in.group_size == 32


def test_parts_that_cannot_share_a_format_stay_float(tmp_path):
    ref = random_model(tiny_config())
    types = lambda name, a: Q.Q8_0 if name.endswith("attn_v.weight") else quantized_types(name, a)  # noqa: E731
    write_gguf(tmp_path / "m.gguf", ref.config, gguf_tensors(ref), types=types)
    floating, _ = load_gguf(tmp_path / "m.gguf")
    quantized, _ = load_gguf(tmp_path / "m.gguf", keep_quantized=True)
    wqkv = quantized.blocks[0].mixer.wqkv  # Q4_0 q and k, Q8_0 v
    assert type(wqkv) is torch.nn.Linear and torch.equal(wqkv.weight, floating.blocks[0].mixer.wqkv.weight)
    assert isinstance(quantized.blocks[0].mixer.wo, QuantLinear)


def test_symmetric_and_asymmetric_parts_share_asymmetric_int4():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((8, 64)).astype(np.float32), rng.standard_normal((4, 64)).astype(np.float32)
    parts = [to_quantized(quants.quantize(a, Q.Q4_0), Q.Q4_0), to_quantized(quants.quantize(b, Q.Q4_1), Q.Q4_1)]
    fused = concat_rows(parts)
    assert fused.offsets is not None and fused.codes.shape == (12, 32)
    want = np.concatenate([quants.dequantize(quants.quantize(a, Q.Q4_0), Q.Q4_0),
                           quants.dequantize(quants.quantize(b, Q.Q4_1), Q.Q4_1)])
    # s * (q - 8) written as s * q + (-8 s): the same value, rounded once more
    np.testing.assert_allclose(dequantize_ref(fused).numpy(), want, rtol=1e-6, atol=1e-6)
    assert to_quantized(np.zeros((1, 210), np.uint8), Q.Q6_K) is None  # not kept: dequantized instead


# -- the real model ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_pair(smollm2_gguf):
    floating, tokenizer = load_gguf(smollm2_gguf)
    quantized, _ = load_gguf(smollm2_gguf, keep_quantized=True)
    return floating, quantized, tokenizer


def test_real_model_keeps_q4_1_and_q8_0(smollm2_pair):
    floating, quantized, _ = smollm2_pair
    mods = [m for m in quantized.modules() if isinstance(m, QuantLinear)]
    assert len(mods) == 4 * 30 + 1
    assert {(m.fmt, m.offsets is not None) for m in mods} == {("int4", True), ("int8", False)}
    quant_bytes = sum(m.weight_q.nbytes() for m in mods)
    float_bytes = sum(m.weight.numel() * 4 for m in floating.modules() if isinstance(m, torch.nn.Linear))
    assert quant_bytes < 0.2 * float_bytes  # ~4.5-bit layers and an 8.5-bit head instead of 32-bit


def test_real_exact_mode_matches_the_float_model(smollm2_pair, pydoc_text):
    """Exact mode: logits of a 128-token prompt (the GEMM path) and of 64 greedy decode steps (the
    kernels, one row at a time) equal the float32 model's up to summation order; same tokens."""
    floating, quantized, tokenizer = smollm2_pair
    set_quant_modes(quantized, act_mode="exact")
    ids = torch.tensor([tokenizer.encode(pydoc_text[:2000])[:128]])
    models = (floating, quantized)
    caches = [m.new_cache(1, max_len=256) for m in models]
    with torch.no_grad():
        want, got = (m(ids, c)[0, -1] for m, c in zip(models, caches))
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()
        tokens = [[int(want.argmax())], [int(got.argmax())]]
        for _ in range(63):
            want, got = (m(torch.tensor([t[-1:]]), c)[0, -1] for m, c, t in zip(models, caches, tokens))
            assert (got - want).abs().max() <= 1e-4 * want.abs().max()
            tokens[0].append(int(want.argmax()))
            tokens[1].append(int(got.argmax()))
    assert tokens[0] == tokens[1]


@pytest.mark.slow
def test_real_fast_mode_perplexity_within_half_a_percent(smollm2_pair, pydoc_text):
    """Fast mode (int8 activations in every matmul, prefill included: the GEMM path is switched off)
    against float32, sliding-window perplexity over 2048 tokens of pydoc text."""
    from hybridlm.eval.perplexity import perplexity

    floating, quantized, tokenizer = smollm2_pair
    ids = tokenizer.encode(pydoc_text[30000:])[:2048]
    set_quant_modes(quantized, act_mode="fast")
    before = qmatmul.gemm_rows()
    qmatmul.set_gemm_rows(10**9)
    try:
        fast = perplexity(quantized, ids, window=512, stride=256).perplexity
    finally:
        qmatmul.set_gemm_rows(before)
        set_quant_modes(quantized, act_mode="exact")
    ref = perplexity(floating, ids, window=512, stride=256).perplexity
    assert 2.0 < ref < 100.0
    assert abs(fast / ref - 1) < 0.005, (fast, ref)
