"""One `ModelConfig` for every model hybridlm builds.

A model is a stack of pre-norm (or post-norm) residual blocks described by a pattern string, one
symbol per block, as Nemotron-H's `hybrid_override_pattern` does:

    '*'  self-attention          '-'  MLP (or GLU)
    'M'  Mamba-2 mixer            'E'  mixture-of-experts MLP

A plain Transformer layer is an attention block followed by an MLP block, so a dense model of
`n_layers` layers has the pattern '*-' * n_layers; that is what an empty `layer_pattern` means.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

BLOCK_KINDS = {"*": "attention", "-": "mlp", "M": "mamba", "E": "moe"}
POSITIONS = ("rope", "learned", "sinusoidal", "alibi", "none")
ROPE_SCALINGS = ("none", "linear", "llama3")
MLP_KINDS = ("gelu", "gelu_tanh", "relu", "relu2", "swiglu", "geglu", "reglu")
NORMS = ("rmsnorm", "layernorm")


class ConfigError(ValueError):
    """A model configuration that cannot describe a working model."""


@dataclass
class ModelConfig:
    # sizes
    vocab_size: int = 32000  # tokens in the embedding and the LM head
    d_model: int = 512  # residual stream width
    n_layers: int = 8  # transformer layers (attention + MLP) when layer_pattern is empty
    n_heads: int = 8  # query heads
    n_kv_heads: int | None = None  # key/value heads: n_heads = MHA, 1 = MQA, between = GQA
    head_dim: int | None = None  # per-head width; default d_model // n_heads
    d_ff: int = 2048  # hidden width of the MLP (per branch for GLU)
    max_seq_len: int = 2048  # longest context the model is built for (positions, static caches)
    layer_pattern: str = ""  # one symbol per residual block (see module doc); '' = '*-' * n_layers

    # attention
    qkv_bias: bool = False  # bias on the fused q/k/v projection (GPT-2, Qwen2)
    attn_out_bias: bool = False  # bias on the attention output projection (GPT-2)
    qk_norm: bool = False  # RMSNorm over each head of q and k before RoPE (Qwen3)
    sliding_window: int | None = None  # attend to at most this many most recent tokens (Mistral)
    attn_impl: str = "sdpa"  # "sdpa" (fast) or "ref" (explicit softmax(QK^T/sqrt(d))V)

    # positions
    position: str = "rope"  # one of POSITIONS
    rope_theta: float = 10000.0  # RoPE base
    rope_scaling: str = "none"  # one of ROPE_SCALINGS
    rope_factor: float = 1.0  # position interpolation factor (linear, llama3)
    rope_low_freq_factor: float = 1.0  # llama3 scaling: wavelengths above orig/low are scaled
    rope_high_freq_factor: float = 4.0  # llama3 scaling: wavelengths below orig/high are kept
    rope_original_max_seq_len: int = 8192  # llama3 scaling: the pre-extension context

    # MLP, norms, embeddings
    mlp: str = "swiglu"  # one of MLP_KINDS
    mlp_bias: bool = False  # biases in the MLP projections (GPT-2)
    norm: str = "rmsnorm"  # one of NORMS
    norm_eps: float = 1e-5  # epsilon inside the norm's square root
    norm_position: str = "pre"  # "pre": x + f(norm(x)); "post": norm(x + f(x))
    tie_embeddings: bool = False  # LM head shares the token embedding matrix
    dropout: float = 0.0  # on embeddings, attention probabilities and residual branches

    # special tokens (model-level defaults; a tokenizer may override)
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    # derived in __post_init__, not part of the serialised config
    blocks: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
            self.head_dim = self.d_model // self.n_heads
        pattern = self.layer_pattern or "*-" * self.n_layers
        bad = sorted(set(pattern) - set(BLOCK_KINDS))
        if bad:
            raise ConfigError(f"layer_pattern has unknown symbols {bad}; known: {sorted(BLOCK_KINDS)}")
        self.blocks = tuple(BLOCK_KINDS[s] for s in pattern)
        self._validate()

    def _validate(self) -> None:
        checks = [
            (self.vocab_size > 0 and self.d_model > 0 and self.n_heads > 0, "sizes must be positive"),
            (self.n_heads % self.n_kv_heads == 0, f"n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}"),
            (self.position in POSITIONS, f"position must be one of {POSITIONS}"),
            (self.rope_scaling in ROPE_SCALINGS, f"rope_scaling must be one of {ROPE_SCALINGS}"),
            (self.mlp in MLP_KINDS, f"mlp must be one of {MLP_KINDS}"),
            (self.norm in NORMS, f"norm must be one of {NORMS}"),
            (self.norm_position in ("pre", "post"), "norm_position must be 'pre' or 'post'"),
            (self.attn_impl in ("sdpa", "ref"), "attn_impl must be 'sdpa' or 'ref'"),
            (self.sliding_window is None or self.sliding_window > 0, "sliding_window must be positive"),
            (self.position != "rope" or self.head_dim % 2 == 0, "RoPE needs an even head_dim"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (len(self.blocks) > 0, "the model has no blocks"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def pattern(self) -> str:
        """The expanded layer pattern, one symbol per block."""
        inverse = {v: k for k, v in BLOCK_KINDS.items()}
        return "".join(inverse[b] for b in self.blocks)

    @property
    def n_attention_layers(self) -> int:
        return self.blocks.count("attention")

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 4) -> int:
        """Bytes of K and V one token adds to the cache, over all attention layers."""
        return 2 * self.n_attention_layers * self.n_kv_heads * self.head_dim * bytes_per_element

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig fields {unknown}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "ModelConfig":
        return ModelConfig.from_dict({**self.to_dict(), **changes})
