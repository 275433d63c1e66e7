"""Parameter and cache-byte predictions held against the real module and the real cache tensors,
and the worked KV-cache figures of the EfficientML lecture (MIT 6.5940, lecture on LLMs)."""

import pytest
import torch

from hybridlm.analysis.memory import (
    cache_bytes, cache_bytes_per_token, count_parameters, dtype_bytes, memory_summary, parameter_count,
)
from hybridlm.config import ModelConfig
from hybridlm.models.decoder import Decoder
from hybridlm.presets import PRESETS, get_preset

KiB, MiB, GiB = 2**10, 2**20, 2**30
TINY = ["gpt2-tiny", "llama-tiny", "qwen3-tiny", "mistral-tiny", "mixtral-tiny", "nemotron-h-tiny"]


@pytest.mark.parametrize("name", TINY)
def test_parameter_formula_matches_the_module(name):
    cfg = get_preset(name)
    assert parameter_count(cfg).total == sum(p.numel() for p in Decoder(cfg).parameters())


def test_parameter_formula_matches_the_module_for_every_option():
    # options the presets do not combine: biases everywhere, LayerNorm, post-norm, a shared
    # expert, learned positions, Mamba biases; checked on the meta device (no memory)
    cfg = ModelConfig(vocab_size=300, d_model=64, n_heads=4, n_kv_heads=2, d_ff=96, layer_pattern="*EM-",
                      n_experts=4, n_experts_per_token=2, moe_shared_expert_d_ff=32, moe_d_ff=48, qkv_bias=True,
                      attn_out_bias=True, mlp_bias=True, qk_norm=True, norm="layernorm", norm_position="post",
                      position="learned", max_seq_len=40, mamba_head_dim=16, d_state=8, mamba_n_groups=2,
                      mamba_proj_bias=True, mamba_conv_bias=False, tie_embeddings=True)
    assert parameter_count(cfg).total == count_parameters(cfg)


def test_every_preset_formula_matches_the_module_on_meta():
    for name in PRESETS:
        cfg = get_preset(name)
        assert parameter_count(cfg).total == count_parameters(cfg), name


def test_moe_active_parameters():
    cfg = get_preset("mixtral-tiny")
    count = parameter_count(cfg)
    model = Decoder(cfg)
    expert = sum(p.numel() for p in model.blocks[1].mixer.experts[0].parameters())
    n_moe = cfg.blocks.count("moe")
    # per token: all but n - k experts of every MoE block
    assert count.active == count.total - n_moe * (cfg.n_experts - cfg.n_experts_per_token) * expert
    # Mixtral-8x7B: 46.7B parameters, 12.9B active per token (Jiang et al. 2024)
    big = parameter_count(get_preset("mixtral-8x7b"))
    assert round(big.total / 1e9, 1) == 46.7 and round(big.active / 1e9, 1) == 12.9


def test_dense_and_hybrid_have_no_inactive_parameters():
    for name in ("llama-tiny", "nemotron-h-tiny"):
        count = parameter_count(get_preset(name))
        assert count.active == count.total


def test_nemotron_h_8b_has_its_published_8_1b_parameters():
    assert parameter_count(get_preset("nemotron-h-8b")).total / 1e9 == pytest.approx(8.1, abs=0.05)


def test_published_sizes():
    # GPT-2 small is 124.4M parameters with tied embeddings; SmolLM2-135M is 134.5M
    assert round(parameter_count(get_preset("gpt2-124m")).total / 1e6, 1) == 124.4
    assert round(parameter_count(get_preset("smollm2-135m")).total / 1e6, 1) == 134.5


def _prefilled_cache(name, n, chunk=None, batch=1, **overrides):
    cfg = get_preset(name, **overrides)
    torch.manual_seed(0)
    model = Decoder(cfg).eval()
    cache = model.new_cache(batch, kind="static", max_len=n)
    ids = torch.randint(0, cfg.vocab_size, (batch, n))
    chunk = chunk or n
    with torch.no_grad():
        for start in range(0, n, chunk):
            model(ids[:, start:start + chunk], cache)
    return cfg, cache


@pytest.mark.parametrize("name, n, chunk", [
    ("llama-tiny", 96, None),  # dense GQA
    ("gpt2-tiny", 80, 32),  # dense MHA, chunked prefill
    ("mistral-tiny", 150, 50),  # sliding window 64: a ring of 63 tokens, whatever the length
    ("nemotron-h-tiny", 100, 40),  # hybrid: KV of one attention layer + state of three Mamba layers
])
def test_cache_bytes_match_the_real_cache_after_prefill(name, n, chunk):
    cfg, cache = _prefilled_cache(name, n, chunk, batch=2)
    assert cache.length == n
    assert cache.nbytes() == cache_bytes(cfg, n, batch=2)


def test_windowed_cache_stops_growing_and_hybrid_state_is_constant():
    cfg = get_preset("mistral-tiny")
    assert cache_bytes(cfg, 10_000) == cache_bytes(cfg, 63) == 63 * cache_bytes_per_token(cfg)
    hybrid = get_preset("nemotron-h-tiny")
    state = cache_bytes(hybrid, 0)
    assert state == hybrid.mamba_state_bytes() > 0
    assert cache_bytes(hybrid, 1000) - cache_bytes(hybrid, 999) == cache_bytes_per_token(hybrid)


def test_half_precision_cache_keeps_the_ssm_state_in_float32():
    cfg, cache = _prefilled_cache("nemotron-h-tiny", 32)
    model_bf16 = Decoder(cfg).to(torch.bfloat16)
    bf16 = model_bf16.new_cache(1, kind="static", max_len=32)
    assert bf16.nbytes() == cache_bytes(cfg, 32, bytes_per_element=2)
    assert bf16.nbytes() > cache.nbytes() / 2  # the SSM state did not halve


# -- the lecture's worked figures: KV cache = BS x layers x kv-heads x head dim x N x 2 (K&V) x 2 bytes

def _llama2(n_layers, n_heads, n_kv_heads):
    return ModelConfig(vocab_size=32000, d_model=n_heads * 128, n_layers=n_layers, n_heads=n_heads,
                       n_kv_heads=n_kv_heads, max_seq_len=4096)


def test_llama2_7b_needs_512_kib_of_kv_cache_per_token():
    cfg = _llama2(32, 32, 32)
    assert cache_bytes_per_token(cfg, dtype_bytes("float16")) == 512 * KiB


def test_llama2_13b_needs_800_kib_per_token():
    assert cache_bytes_per_token(_llama2(40, 40, 40), 2) == 800 * KiB


def test_llama2_70b_as_if_mha_needs_2_5_mib_per_token_and_gqa_8x_less():
    mha = _llama2(80, 64, 64)
    fp16 = dtype_bytes("float16")
    assert cache_bytes_per_token(mha, fp16) == 2.5 * MiB
    assert cache_bytes(mha, 512, batch=1, bytes_per_element=fp16) == 1.25 * GiB
    assert cache_bytes(mha, 4096, batch=1, bytes_per_element=fp16) == 10 * GiB
    assert cache_bytes(mha, 4096, batch=16, bytes_per_element=fp16) == 160 * GiB  # two A100s
    gqa = _llama2(80, 64, 8)  # the real Llama-2-70B
    assert cache_bytes(gqa, 4096, batch=16, bytes_per_element=fp16) * 8 == 160 * GiB


def test_memory_summary_for_info():
    cfg = get_preset("mistral-tiny")
    mem = memory_summary(cfg, 2)
    assert mem.params == count_parameters(cfg) and mem.weight_bytes == 2 * mem.params
    assert mem.kv_bytes_at_context == cache_bytes(cfg, cfg.max_seq_len, bytes_per_element=2)


# -- int8 KV cache (kv_quant.py): predictions held against the real int8 tensors and their scales

@pytest.mark.parametrize("name, n, chunk", [
    ("llama-tiny", 96, None),  # dense GQA
    ("mistral-tiny", 150, 50),  # a ring of 63 int8 tokens
    ("nemotron-h-tiny", 100, 40),  # int8 KV of one attention layer + the float32 Mamba state
])
def test_int8_cache_bytes_match_the_real_cache(name, n, chunk):
    cfg = get_preset(name)
    torch.manual_seed(0)
    model = Decoder(cfg).eval()
    cache = model.new_cache(2, kind="static", max_len=n, kv_dtype="int8")
    ids = torch.randint(0, cfg.vocab_size, (2, n))
    with torch.no_grad():
        for start in range(0, n, chunk or n):
            model(ids[:, start:start + (chunk or n)], cache)
    assert cache.nbytes() == cache_bytes(cfg, n, batch=2, kv_dtype="int8")


def test_int8_kv_is_a_quarter_of_float32_plus_scales():
    cfg = get_preset("smollm2-135m")  # head_dim 64: (64 + 4) / (64 x 4) bytes
    ratio = cache_bytes_per_token(cfg, 4, "int8") / cache_bytes_per_token(cfg, 4)
    assert ratio == pytest.approx((64 + 4) / 256)
    assert cache_bytes_per_token(cfg, 4, "int8") == 2 * 30 * 3 * (64 + 4)
    summary = memory_summary(cfg, 4, kv_dtype="int8")
    assert summary.kv_bytes_at_context == cfg.max_seq_len * summary.kv_bytes_per_token
    with pytest.raises(ValueError, match="int8"):
        cache_bytes_per_token(cfg, 4, "int4")
