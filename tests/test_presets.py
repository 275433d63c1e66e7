"""The hybrid presets: published Nemotron-H shapes, a tiny one for tests, and the matched comparison pair."""

import pytest

from hybridlm.analysis.memory import count_parameters
from hybridlm.presets import get_preset


def counts(pattern: str) -> tuple[int, int, int]:
    return pattern.count("M"), pattern.count("*"), pattern.count("-")


@pytest.mark.parametrize("name, blocks, mamba_attn_mlp, params_b", [
    ("nemotron-h-8b", 52, (24, 4, 24), 8.1),  # published: 8.1B
    ("nemotron-h-56b", 118, (54, 10, 54), 56.3),  # published: "56B"
])
def test_nemotron_h_shapes_match_the_published_models(name, blocks, mamba_attn_mlp, params_b):
    cfg = get_preset(name)
    assert len(cfg.blocks) == blocks and counts(cfg.pattern) == mamba_attn_mlp
    assert cfg.position == "none" and cfg.mlp == "relu2" and not cfg.tie_embeddings
    assert cfg.mamba_head_dim == 64 and cfg.mamba_n_groups == 8 and cfg.d_conv == 4
    assert cfg.mamba_d_inner == 2 * cfg.d_model  # expand 2
    assert count_parameters(cfg) / 1e9 == pytest.approx(params_b, abs=0.05)


def test_tiny_hybrid_has_every_block_kind_and_a_few_hundred_thousand_parameters():
    cfg = get_preset("nemotron-h-tiny")
    assert set(cfg.blocks) == {"mamba", "attention", "mlp"}
    assert cfg.mamba_chunk_size < 64  # tests cross chunk boundaries with short prompts
    assert 200_000 < count_parameters(cfg) < 5_000_000


def test_comparison_pair_is_matched():
    transformer, hybrid = get_preset("compare-transformer"), get_preset("compare-hybrid")
    assert (transformer.d_model, len(transformer.blocks)) == (hybrid.d_model, len(hybrid.blocks))
    a, b = count_parameters(transformer), count_parameters(hybrid)
    assert abs(a - b) / a < 0.05
    assert hybrid.n_attention_layers / len(hybrid.blocks) == pytest.approx(0.08, abs=0.01)
    assert transformer.n_mamba_layers == 0 and hybrid.n_mamba_layers == 11
    # what the comparison should show: the hybrid's KV cache is ~6x smaller per token
    assert transformer.kv_cache_bytes_per_token() == 6 * hybrid.kv_cache_bytes_per_token()
