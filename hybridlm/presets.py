"""Named model shapes: plain dicts of `ModelConfig` overrides. Lookup is exact."""

from __future__ import annotations

from .config import ModelConfig

_GPT2 = dict(
    position="learned", mlp="gelu_tanh", norm="layernorm", qkv_bias=True, attn_out_bias=True,
    mlp_bias=True, tie_embeddings=True, bos_token_id=50256, eos_token_id=50256,
)
_LLAMA = dict(position="rope", mlp="swiglu", norm="rmsnorm")
_TINY = dict(vocab_size=1024, d_model=128, n_layers=4, n_heads=4, d_ff=512, max_seq_len=512)

PRESETS: dict[str, dict] = {
    # GPT-2 small (Radford et al. 2019)
    "gpt2-124m": dict(_GPT2, vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                      max_seq_len=1024),
    "gpt2-tiny": dict(_GPT2, **dict(_TINY, vocab_size=1024), bos_token_id=0, eos_token_id=0),
    # Llama-3.2-1B shape: GQA 32/8, SwiGLU, RoPE with Llama-3 frequency scaling
    "llama-style": dict(_LLAMA, vocab_size=128256, d_model=2048, n_layers=16, n_heads=32,
                        n_kv_heads=8, d_ff=8192, max_seq_len=131072, rope_theta=500000.0,
                        rope_scaling="llama3", rope_factor=32.0, rope_low_freq_factor=1.0,
                        rope_high_freq_factor=4.0, rope_original_max_seq_len=8192,
                        tie_embeddings=True, bos_token_id=128000, eos_token_id=128001),
    "llama-tiny": dict(_LLAMA, **_TINY, n_kv_heads=2, bos_token_id=1, eos_token_id=2),
    # Mistral-7B-v0.1 shape: GQA 32/8 and a 4096-token sliding window
    "mistral-style": dict(_LLAMA, vocab_size=32000, d_model=4096, n_layers=32, n_heads=32,
                          n_kv_heads=8, d_ff=14336, max_seq_len=32768, sliding_window=4096,
                          bos_token_id=1, eos_token_id=2),
    "mistral-tiny": dict(_LLAMA, **_TINY, n_kv_heads=2, sliding_window=64, bos_token_id=1,
                         eos_token_id=2),
    # Qwen3-0.6B shape: QK-norm, head_dim 128 independent of d_model, tied embeddings
    "qwen3-style": dict(_LLAMA, vocab_size=151936, d_model=1024, n_layers=28, n_heads=16,
                        n_kv_heads=8, head_dim=128, d_ff=3072, max_seq_len=40960, qk_norm=True,
                        rope_theta=1000000.0, norm_eps=1e-6, tie_embeddings=True,
                        bos_token_id=151643, eos_token_id=151645),
    "qwen3-tiny": dict(_LLAMA, **_TINY, n_kv_heads=2, head_dim=64, qk_norm=True, norm_eps=1e-6,
                       tie_embeddings=True, bos_token_id=1, eos_token_id=2),
    # SmolLM2-135M: Llama architecture, GQA 9/3, tied embeddings
    "smollm2-135m": dict(_LLAMA, vocab_size=49152, d_model=576, n_layers=30, n_heads=9,
                         n_kv_heads=3, d_ff=1536, max_seq_len=8192, rope_theta=100000.0,
                         tie_embeddings=True, bos_token_id=1, eos_token_id=2),
}


class UnknownPresetError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def get_preset(name: str, **overrides) -> ModelConfig:
    """The config of preset `name`, with optional field overrides."""
    if name not in PRESETS:
        raise UnknownPresetError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return ModelConfig(**{**PRESETS[name], **overrides})
