"""`analyze`: the summary every script and the CLI read, consistent with its parts."""

import pytest

from hybridlm.analysis.flops import flops_per_token_decode, flops_per_token_prefill
from hybridlm.analysis.memory import cache_bytes, parameter_count
from hybridlm.analysis.summary import analyze, format_analysis
from hybridlm.presets import get_preset


def test_summary_is_consistent_with_its_parts():
    cfg = get_preset("compare-hybrid")
    a = analyze(cfg, context=8192, batch=3, dtype="bfloat16")
    assert a.params_total == a.params_active == parameter_count(cfg).total
    assert a.weight_bytes == 2 * a.params_total
    assert a.cache_bytes_at_context == cache_bytes(cfg, 8192, 3, 2) == 3 * (8192 * a.cache_bytes_per_token
                                                                          + a.mamba_state_bytes)
    assert a.flops_per_token_prefill == flops_per_token_prefill(cfg, 8192)
    assert a.flops_per_token_decode == flops_per_token_decode(cfg, 8192)
    assert sum(a.flops_prefill_terms.values()) == pytest.approx(a.flops_per_token_prefill)
    # decode reads every weight but the untied embedding table, plus the cache
    assert a.decode_bytes_per_step == 2 * (a.params_total - cfg.vocab_size * cfg.d_model) + a.cache_bytes_at_context


def test_defaults_to_the_models_context():
    cfg = get_preset("nemotron-h-8b")
    assert analyze(cfg).context == cfg.max_seq_len == 8192


def test_nemotron_h_8b():
    a = analyze(get_preset("nemotron-h-8b"), context=8192)
    assert a.params_total / 1e9 == pytest.approx(8.1, abs=0.05)
    assert (a.attention_layers, a.mamba_layers) == (4, 24)
    # 2 FLOPs per non-embedding parameter and token, give or take attention and the scan
    non_embedding = a.params_total - a.params_by_kind["embedding"]
    assert a.flops_per_token_decode / (2 * non_embedding) == pytest.approx(1, abs=0.1)
    # KV of 4 layers x 8 heads x 128 in bf16 = 16 KiB per token; the Mamba state is constant
    assert a.cache_bytes_per_token == 16 * 1024
    text = format_analysis("nemotron-h-8b", a)
    assert "8,100,852,736" in text and "Mamba state" in text


def test_hybrid_cache_is_many_times_smaller_at_long_context():
    dense, hybrid = analyze(get_preset("compare-transformer"), 32768), analyze(get_preset("compare-hybrid"), 32768)
    ratio = dense.cache_bytes_at_context / hybrid.cache_bytes_at_context
    assert 5 < ratio <= 6  # 12 vs 2 attention layers, less the hybrid's constant Mamba state


def test_bad_context_is_an_error():
    with pytest.raises(ValueError):
        analyze(get_preset("llama-tiny"), context=0)
