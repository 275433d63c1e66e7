"""Named model shapes: plain dicts of `ModelConfig` overrides. Lookup is exact."""

from __future__ import annotations

from .config import ModelConfig

_GPT2 = dict(
    position="learned", mlp="gelu_tanh", norm="layernorm", qkv_bias=True, attn_out_bias=True,
    mlp_bias=True, tie_embeddings=True, bos_token_id=50256, eos_token_id=50256,
)
_LLAMA = dict(position="rope", mlp="swiglu", norm="rmsnorm")
_TINY = dict(vocab_size=1024, d_model=128, n_layers=4, n_heads=4, d_ff=512, max_seq_len=512)
# Nemotron-H (NVIDIA 2025, arXiv:2504.03624): NoPE GQA attention, non-gated squared-ReLU MLP,
# Mamba-2 heads of 64 with 8 B/C groups (the gated norm grouped the same way), untied embeddings,
# no linear biases (the conv keeps its bias). dt is clamped below at dt_min, as transformers'
# NemotronH runs these checkpoints.
_NEMOTRON_H = dict(position="none", mlp="relu2", norm="rmsnorm", norm_eps=1e-5, tie_embeddings=False,
                   mamba_head_dim=64, mamba_n_groups=8, d_conv=4, mamba_chunk_size=128, mamba_conv_bias=True,
                   mamba_proj_bias=False, mamba_dt_limit=(0.001, None), bos_token_id=1, eos_token_id=2)
_NEMOTRON_H_8B_PATTERN = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"  # 24 M, 4 *, 24 -
# 54 M, 10 *, 54 -: the hybrid_override_pattern of nvidia/Nemotron-H-56B-Base-8K
_NEMOTRON_H_56B_PATTERN = ("M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-"
                           "M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-")
# The matched pair for `hybridlm compare`: same width (512), depth (24 blocks), MLP and attention
# shape; the hybrid swaps 10 of the 12 attention blocks for Mamba-2 (2 of 24 blocks, 8%,
# attention, as Nemotron-H's 4 of 52) and has one MLP fewer. Its Mamba is expand 1 (8 heads x 64
# = d_model), so a Mamba block costs about the parameters of the attention block it replaces and
# the two totals stay within 1% (tests/test_presets.py); Nemotron-H pays for expand 2 elsewhere.
_COMPARE = dict(vocab_size=32000, d_model=512, n_heads=8, n_kv_heads=4, d_ff=2048, mlp="relu2",
                max_seq_len=32768, tie_embeddings=False, bos_token_id=1, eos_token_id=2)

_BERT = dict(family="encoder", position="learned", type_vocab_size=2, norm="layernorm", norm_eps=1e-12,
             norm_position="post", embed_norm=True, mlp="gelu", mlp_bias=True, qkv_bias=True, attn_out_bias=True,
             mlm_head=True, tie_embeddings=True, pad_token_id=0)
_T5 = dict(family="seq2seq", position="relative", relative_buckets=32, relative_max_distance=128, norm="rmsnorm",
           norm_eps=1e-6, norm_position="pre", tie_embeddings=True, max_seq_len=512, pad_token_id=0,
           eos_token_id=1, decoder_start_token_id=0)
_TRANSFORMER = dict(family="seq2seq", position="sinusoidal", norm="layernorm", norm_position="post", mlp="relu",
                    mlp_bias=True, qkv_bias=True, attn_out_bias=True, tie_embeddings=True, pad_token_id=0,
                    eos_token_id=1, decoder_start_token_id=0)

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
    # Mixtral-8x7B-v0.1 (Jiang et al. 2024): every MLP is 8 SwiGLU experts, top-2, softmax router
    # renormalised over the chosen two; 46.7B parameters, 12.9B active per token
    "mixtral-8x7b": dict(_LLAMA, vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                         d_ff=14336, max_seq_len=32768, rope_theta=1000000.0, n_experts=8,
                         n_experts_per_token=2, moe_aux_loss_coef=0.02, bos_token_id=1, eos_token_id=2),
    "mixtral-tiny": dict(_LLAMA, **dict(_TINY, d_ff=128), n_kv_heads=2, rope_theta=1000000.0, n_experts=8,
                         n_experts_per_token=2, moe_aux_loss_coef=0.02, bos_token_id=1, eos_token_id=2),
    # Nemotron-H-8B-Base-8K: 8.1B parameters
    "nemotron-h-8b": dict(_NEMOTRON_H, vocab_size=131072, d_model=4096, layer_pattern=_NEMOTRON_H_8B_PATTERN,
                          n_heads=32, n_kv_heads=8, head_dim=128, d_ff=21504, mamba_n_heads=128, d_state=128,
                          max_seq_len=8192),
    # Nemotron-H-56B-Base-8K (paper Table 1, Megatron-Bridge's provider): 118 blocks, width 8192,
    # MLP 32768, 64 query / 8 KV heads of 128, Mamba 256 heads x 64 with state 256 and 8 groups
    "nemotron-h-56b": dict(_NEMOTRON_H, vocab_size=131072, d_model=8192, layer_pattern=_NEMOTRON_H_56B_PATTERN,
                           n_heads=64, n_kv_heads=8, head_dim=128, d_ff=32768, mamba_n_heads=256, d_state=256,
                           max_seq_len=8192),
    "nemotron-h-tiny": dict(_NEMOTRON_H, vocab_size=1024, d_model=128, layer_pattern="M-M*-M-", n_heads=4,
                            n_kv_heads=2, head_dim=32, d_ff=256, mamba_n_heads=8, mamba_head_dim=32, d_state=16,
                            mamba_n_groups=2, mamba_chunk_size=16, max_seq_len=512),
    "compare-transformer": dict(_COMPARE, layer_pattern="*-" * 12, position="rope", rope_theta=500000.0),
    "compare-hybrid": dict(_COMPARE, layer_pattern="M-M-M-M*-" * 2 + "M-M-M-", position="none",
                           mamba_n_heads=8, mamba_head_dim=64, d_state=128, mamba_n_groups=1, d_conv=4,
                           mamba_chunk_size=128),
    # BERT-base (Devlin et al. 2019): post-norm LayerNorm over summed token, position and segment
    # embeddings, GELU MLP, biases everywhere; the MLM head's decoder is the tied embedding
    "bert-base": dict(_BERT, vocab_size=30522, d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=512),
    "bert-tiny": dict(_BERT, **dict(_TINY, max_seq_len=128)),
    # T5-small v1.0 (Raffel et al. 2020): ReLU MLP, tied head reading a d_model^-0.5-scaled output
    "t5-small": dict(_T5, vocab_size=32128, d_model=512, n_layers=6, n_heads=8, head_dim=64, d_ff=2048,
                     mlp="relu", scale_decoder_output=True),
    # T5 v1.1 shape: gated GELU; tied here to keep the tiny size small
    "t5-tiny": dict(_T5, **dict(_TINY, n_layers=2, d_ff=256), n_decoder_layers=2, head_dim=32, mlp="geglu"),
    # the original Transformer, base (Vaswani et al. 2017): sinusoidal positions, post-norm, ReLU,
    # one vocabulary shared by source, target and output
    "transformer-base": dict(_TRANSFORMER, vocab_size=37000, d_model=512, n_layers=6, n_heads=8, d_ff=2048,
                             max_seq_len=512),
    "transformer-tiny": dict(_TRANSFORMER, **dict(_TINY, n_layers=2, max_seq_len=128)),
}


class UnknownPresetError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def get_preset(name: str, **overrides) -> ModelConfig:
    """The config of preset `name`, with optional field overrides."""
    if name not in PRESETS:
        raise UnknownPresetError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return ModelConfig(**{**PRESETS[name], **overrides})
