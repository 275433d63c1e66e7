import math

import torch

from hybridlm.config import ModelConfig
from hybridlm.nn.positions import (alibi_slopes, apply_rope, apply_rope_ref, rope_cos_sin, rope_inv_freq,
                                   sinusoidal_embedding)


def test_alibi_slopes_match_the_paper():
    # 8 heads: 1/2, 1/4, ..., 1/256 (Press et al. 2022, section 3)
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # 12 heads: the 8-head slopes, then every other slope of the 16-head sequence
    s16 = [2.0 ** (-0.5 * (i + 1)) for i in range(16)]
    expected = [2.0 ** -(i + 1) for i in range(8)] + s16[0::2][:4]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected))


def test_rope_preserves_norms_and_relative_positions():
    cfg = ModelConfig(d_model=64, n_heads=2)
    inv = rope_inv_freq(cfg)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)

    def rotated(x, pos):
        cos, sin = rope_cos_sin(inv, torch.tensor([[pos]]), torch.float32)
        return apply_rope(x, cos, sin)

    torch.testing.assert_close(rotated(q, 7).norm(), q.norm())
    # <R_m q, R_n k> depends only on m - n
    a = (rotated(q, 10) * rotated(k, 4)).sum()
    b = (rotated(q, 106) * rotated(k, 100)).sum()
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_rope_matches_the_paper_formula():
    inv = rope_inv_freq(ModelConfig(d_model=64, n_heads=4))
    x = torch.randn(2, 5, 3, 16)  # (B, T, H, D)
    pos = torch.tensor([[0, 1, 2, 3, 4], [9, 100, 1000, 5000, 20000]])
    cos, sin = rope_cos_sin(inv, pos, torch.float32)
    torch.testing.assert_close(apply_rope(x, cos, sin), apply_rope_ref(x, pos, inv))


def test_linear_scaling_divides_frequencies():
    base = rope_inv_freq(ModelConfig(d_model=64, n_heads=2))
    linear = rope_inv_freq(ModelConfig(d_model=64, n_heads=2, rope_scaling="linear", rope_factor=4.0))
    torch.testing.assert_close(linear, base / 4)


def test_llama3_scaling_matches_transformers():
    import transformers.modeling_rope_utils as hf
    from transformers import LlamaConfig

    cfg = ModelConfig(d_model=2048, n_heads=32, rope_theta=500000.0, rope_scaling="llama3", rope_factor=32.0,
                      rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_seq_len=8192)
    hf_cfg = LlamaConfig(hidden_size=2048, num_attention_heads=32, max_position_embeddings=131072,
                         rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                                              high_freq_factor=4.0, original_max_position_embeddings=8192))
    expected, _ = hf.ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    torch.testing.assert_close(rope_inv_freq(cfg), expected)


def test_sinusoidal_matches_the_formula():
    pe = sinusoidal_embedding(torch.tensor([[3]]), 8, torch.float32)[0, 0]
    for i in range(4):
        angle = 3 / 10000 ** (2 * i / 8)
        assert math.isclose(pe[2 * i].item(), math.sin(angle), abs_tol=1e-6)
        assert math.isclose(pe[2 * i + 1].item(), math.cos(angle), abs_tol=1e-6)
