import pytest
import torch

from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset

VARIANTS = {
    "gpt2-learned": ("gpt2-tiny", {}),
    "llama-rope": ("llama-tiny", {}),
    "mistral-window": ("mistral-tiny", dict(sliding_window=5)),
    "qwen3-qknorm": ("qwen3-tiny", {}),
    "alibi": ("llama-tiny", dict(position="alibi")),
    "sinusoidal-postnorm": ("gpt2-tiny", dict(position="sinusoidal", norm_position="post")),
    "mqa-geglu": ("llama-tiny", dict(n_kv_heads=1, mlp="geglu")),
    "mha-reglu-scaled": ("llama-tiny", dict(n_kv_heads=4, mlp="reglu", rope_scaling="linear", rope_factor=2.0)),
    "relu-mlp": ("gpt2-tiny", dict(mlp="relu", qkv_bias=False)),
}


def _pair(name, overrides):
    torch.manual_seed(0)
    fast = Decoder(get_preset(name, **overrides)).eval()
    with torch.no_grad():
        for p in fast.parameters():
            p.normal_(0, 0.1) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    ref = Decoder(fast.config.replace(attn_impl="ref")).eval()
    ref.load_state_dict(fast.state_dict())
    return fast, ref


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fast_attention_matches_reference_model(variant):
    fast, ref = _pair(*VARIANTS[variant])
    ids = torch.randint(0, 1024, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :5] = 0  # left padding in the second row
    with torch.no_grad():
        for m in (None, mask):
            torch.testing.assert_close(fast(ids, attention_mask=m), ref(ids, attention_mask=m), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_left_padding_does_not_change_a_row(variant):
    fast, _ = _pair(*VARIANTS[variant])
    ids = torch.randint(0, 1024, (1, 10))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 10)], dim=1).long()
    with torch.no_grad():
        alone = fast(ids)
        with_pad = fast(padded, attention_mask=mask)[:, 4:]
    torch.testing.assert_close(with_pad, alone, atol=1e-5, rtol=1e-5)


def test_last_only_returns_the_last_position():
    fast, _ = _pair("llama-tiny", {})
    ids = torch.randint(0, 1024, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(fast(ids, last_only=True), fast(ids)[:, -1:])


def test_tied_embeddings_share_one_tensor():
    model = Decoder(get_preset("qwen3-tiny"))
    assert model.lm_head.weight is model.embed.weight


def test_the_pattern_builds_one_mixer_per_symbol():
    from hybridlm.nn.mamba2 import Mamba2

    model = Decoder(get_preset("nemotron-h-tiny"))
    kinds = {"M": Mamba2, "*": "Attention", "-": "MLP"}
    for symbol, block in zip(model.config.pattern, model.blocks):
        want = kinds[symbol]
        assert type(block.mixer) is want if isinstance(want, type) else type(block.mixer).__name__ == want


def test_backward_reaches_every_parameter():
    model = Decoder(get_preset("gpt2-tiny", dropout=0.1)).train()
    logits = model(torch.randint(0, 1024, (2, 8)))
    logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_rope_frequencies_stay_float32_when_the_model_moves_to_bf16():
    model = Decoder(get_preset("llama-tiny")).to(torch.bfloat16)
    assert model.embed.weight.dtype == torch.bfloat16
    assert model.rope_inv_freq.dtype == torch.float32
