"""FLOP predictions held against torch.utils.flop_counter.FlopCounterMode on real forwards.

What both sides count: matrix products and convolutions, 2 FLOPs per multiply-add (linear layers,
QK^T and PV over the whole rectangle of queries x keys, the Mamba conv, the chunked SSD scan's
matmuls, the chosen experts). Neither counts norms, activations, softmax or RoPE. The models run
attn_impl="ref": torch's counter has no formula for the CPU SDPA kernel
(aten._scaled_dot_product_flash_attention_for_cpu) and would count its attention as 0. In decode,
a Mamba layer's conv and SSD step are elementwise ops the counter does not see, so a decode step
is compared on `FlopCount.matmul` and the elementwise terms are checked on their own.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hybridlm.analysis.flops import (
    causal_attention_flops, flops_per_token_decode, flops_per_token_prefill, forward_flops, ssd_step_flops,
)
from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset

MODELS = ["llama-tiny", "gpt2-tiny", "qwen3-tiny", "mistral-tiny", "mixtral-tiny", "nemotron-h-tiny"]


def counted(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def model_for(name):
    cfg = get_preset(name, attn_impl="ref")
    torch.manual_seed(0)
    return cfg, Decoder(cfg).eval()


@pytest.mark.parametrize("name", MODELS)
def test_forward_flops_match_the_flop_counter(name):
    cfg, model = model_for(name)
    t = 90  # crosses nemotron-h-tiny's 16-token SSD chunks with a partial last chunk
    ids = torch.randint(0, cfg.vocab_size, (2, t))
    with torch.no_grad():
        measured = counted(lambda: model(ids))
    assert forward_flops(cfg, t, batch=2).total == pytest.approx(measured, rel=0.05)


@pytest.mark.parametrize("name", MODELS)
def test_chunked_prefill_and_decode_flops_match_the_flop_counter(name):
    cfg, model = model_for(name)
    ids = torch.randint(0, cfg.vocab_size, (1, 120))
    with torch.no_grad():
        cache = model.new_cache(1, kind="static", max_len=121)
        model(ids[:, :70], cache)
        chunk = counted(lambda: model(ids[:, 70:120], cache, last_only=True))  # 50 tokens after 70
        step = counted(lambda: model(ids[:, :1], cache))  # one token after 120
    assert forward_flops(cfg, 50, 70, last_only=True).total == pytest.approx(chunk, rel=0.05)
    decode = forward_flops(cfg, 1, 120, decode=True)
    assert decode.matmul == pytest.approx(step, rel=0.05)
    assert decode.total == flops_per_token_decode(cfg, 120)


def test_decode_counts_the_mamba_step_the_counter_cannot_see():
    cfg = get_preset("nemotron-h-tiny")
    decode = forward_flops(cfg, 1, 100, decode=True)
    assert decode.elementwise == {"conv", "ssd"}
    assert decode.terms["ssd"] == cfg.n_mamba_layers * ssd_step_flops(cfg) > 0
    assert decode.terms["conv"] == cfg.n_mamba_layers * 2 * cfg.mamba_conv_dim * cfg.d_conv
    assert decode.total > decode.matmul


def test_attention_is_quadratic_and_mamba_is_linear_in_context():
    dense, hybrid = get_preset("compare-transformer"), get_preset("compare-hybrid")
    # decode: the transformer's cost per token grows with the context, the hybrid's barely
    grow_dense = flops_per_token_decode(dense, 32768) / flops_per_token_decode(dense, 1024)
    grow_hybrid = flops_per_token_decode(hybrid, 32768) / flops_per_token_decode(hybrid, 1024)
    assert grow_dense > 5 and grow_hybrid < grow_dense / 3
    # the attention term alone: 4 x keys x heads x head dim per query and layer
    a = forward_flops(dense, 1, 999, decode=True).terms["attention"]
    assert a == dense.n_attention_layers * 4 * 1000 * dense.n_heads * dense.head_dim
    # prefill: the whole rectangle; counting only visible keys gives (T + 1) / 2T of it
    t = 4096
    rect = forward_flops(dense, t).terms["attention"]
    assert causal_attention_flops(dense, t) / rect == pytest.approx((t + 1) / (2 * t))
    assert flops_per_token_prefill(dense, t, causal=True) < flops_per_token_prefill(dense, t)


def test_sliding_window_caps_decode_attention():
    cfg = get_preset("mistral-tiny")  # window 64
    near, far = forward_flops(cfg, 1, 63, decode=True), forward_flops(cfg, 1, 5000, decode=True)
    assert near.total == far.total


def test_moe_counts_only_the_active_experts():
    cfg = get_preset("mixtral-tiny")
    dense = cfg.replace(n_experts=0, layer_pattern="")  # the same model with one plain MLP per layer
    per_token = forward_flops(cfg, 1).terms["linear"] - forward_flops(dense, 1).terms["linear"]
    mlp = 2 * 3 * cfg.d_model * cfg.moe_d_ff  # SwiGLU: gate, up, down
    # in every MoE block: k experts instead of one MLP, plus the router
    per_block = (cfg.n_experts_per_token - 1) * mlp + 2 * cfg.d_model * cfg.n_experts
    assert per_token == cfg.blocks.count("moe") * per_block
