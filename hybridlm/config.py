"""One `ModelConfig` for every model hybridlm builds.

A model is a stack of pre-norm (or post-norm) residual blocks described by a pattern string, one
symbol per block, as Nemotron-H's `hybrid_override_pattern` does:

    '*'  self-attention          '-'  MLP (or GLU)
    'M'  Mamba-2 mixer            'E'  mixture-of-experts MLP

A plain Transformer layer is an attention block followed by an MLP block, so a dense model of
`n_layers` layers has the pattern '*-' * n_layers; that is what an empty `layer_pattern` means.
With `n_experts` > 0 the MLP of every layer is a mixture of experts: an empty pattern is then
'*E' * n_layers (Mixtral).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

BLOCK_KINDS = {"*": "attention", "-": "mlp", "M": "mamba", "E": "moe"}
POSITIONS = ("rope", "learned", "sinusoidal", "alibi", "none", "relative")  # relative: T5's bucketed bias
ROPE_SCALINGS = ("none", "linear", "llama3")
MLP_KINDS = ("gelu", "gelu_tanh", "relu", "relu2", "swiglu", "geglu", "reglu")
NORMS = ("rmsnorm", "layernorm")
MOE_ROUTERS = ("softmax", "sigmoid")
SSD_IMPLS = ("chunked", "ref")
FAMILIES = ("decoder", "encoder", "seq2seq")  # models/decoder.py, models/encoder.py, models/seq2seq.py


class ConfigError(ValueError):
    """A model configuration that cannot describe a working model."""


@dataclass
class ModelConfig:
    # sizes
    vocab_size: int = 32000  # tokens in the embedding and the LM head
    d_model: int = 512  # residual stream width
    n_layers: int = 8  # transformer layers (attention + MLP or MoE) when layer_pattern is empty
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

    # mixture of experts ('E' blocks); experts are MLPs of kind `mlp` (SwiGLU for Mixtral)
    n_experts: int = 0  # routed experts per 'E' block; 0 = no MoE
    n_experts_per_token: int = 2  # experts each token is sent to (top-k)
    moe_router: str = "softmax"  # one of MOE_ROUTERS: softmax over experts, or per-expert sigmoid scores
    moe_renormalize: bool = True  # rescale the k chosen scores to sum to 1 (Mixtral); False: raw (Switch)
    moe_d_ff: int | None = None  # hidden width of each expert (per GLU branch); default d_ff
    moe_shared_expert_d_ff: int = 0  # hidden width of an always-on shared expert; 0 = none
    moe_capacity_factor: float = 0.0  # tokens an expert takes per forward: factor x k x tokens / n_experts
    #   (Switch Transformers); the overflow is dropped and passes through the residual; 0 = no limit
    moe_aux_loss_coef: float = 0.01  # weight of the load-balancing loss the trainer adds (Switch's alpha)
    moe_impl: str = "fast"  # "fast" (tokens grouped by expert) or "ref" (per-token loop)

    # Mamba-2 mixers ('M' blocks; Dao & Gu 2024). Inner width = mamba_n_heads x mamba_head_dim.
    mamba_n_heads: int | None = None  # SSD heads; default 2 * d_model // mamba_head_dim (expand 2)
    mamba_head_dim: int = 64  # channels per SSD head (P)
    d_state: int = 128  # SSM state size per channel (N)
    mamba_n_groups: int = 1  # groups of heads sharing B and C (like KV groups); the gated norm's groups too
    d_conv: int = 4  # width of the depthwise causal conv over x, B, C
    mamba_chunk_size: int = 128  # tokens per chunk of the chunked SSD scan
    mamba_conv_bias: bool = True  # bias in the causal conv
    mamba_proj_bias: bool = False  # biases in the in/out projections
    mamba_dt_min: float = 0.001  # init: dt drawn log-uniformly from [dt_min, dt_max] ...
    mamba_dt_max: float = 0.1
    mamba_dt_init_floor: float = 1e-4  # ... and clamped below at this floor
    mamba_dt_limit: tuple[float, float | None] = (0.0, None)  # dt = softplus(.) is clamped into
    #   [low, high]; high None = no upper limit (JSON has no infinity)
    ssd_impl: str = "chunked"  # one of SSD_IMPLS: chunked SSD scan (fast) or the sequential recurrence

    # encoder-only (BERT) and encoder-decoder (T5, the original Transformer) models. A seq2seq
    # model's encoder is layer_pattern / n_layers; its decoder has n_decoder_layers layers of
    # self-attention, cross-attention and MLP. Input embeddings are shared by encoder and decoder.
    family: str = "decoder"  # one of FAMILIES
    type_vocab_size: int = 0  # token-type (segment) embeddings added to the input (BERT: 2); 0 = none
    embed_norm: bool = False  # a norm over the summed input embeddings (BERT's post-norm stack)
    mlm_head: bool = False  # encoder: BERT's MLM head (dense, activation, norm, decoder tied to the embedding)
    pooler: bool = False  # encoder: BERT's pooler, tanh(W h_CLS + b)
    n_decoder_layers: int | None = None  # seq2seq: decoder layers; default n_layers
    relative_buckets: int = 32  # position "relative" (T5): buckets of the learned per-head attention bias
    relative_max_distance: int = 128  # position "relative": distances from here on share the last bucket
    scale_decoder_output: bool = False  # seq2seq: the decoder output x d_model^-0.5 before the LM head (T5 v1.0)

    # special tokens (model-level defaults; a tokenizer may override)
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None  # encoder/seq2seq: padding (T5 also starts the decoder with it)
    mask_token_id: int | None = None  # MLM: the [MASK] token
    decoder_start_token_id: int | None = None  # seq2seq: the decoder's first input token

    # derived in __post_init__, not part of the serialised config
    blocks: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
            self.head_dim = self.d_model // self.n_heads
        if self.moe_d_ff is None:
            self.moe_d_ff = self.d_ff
        if self.n_decoder_layers is None:
            self.n_decoder_layers = self.n_layers
        if self.mamba_n_heads is None:
            self.mamba_n_heads = max(1, 2 * self.d_model // self.mamba_head_dim)
        if len(self.mamba_dt_limit) != 2:
            raise ConfigError(f"mamba_dt_limit must be (low, high), not {self.mamba_dt_limit!r}")
        low, high = self.mamba_dt_limit  # a list from JSON; an infinite high means no limit
        self.mamba_dt_limit = (float(low), None if high is None or high == float("inf") else float(high))
        pattern = self.layer_pattern or ("*E" if self.n_experts else "*-") * self.n_layers
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
            *self._moe_checks(),
            *self._mamba_checks(),
            *self._family_checks(),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def _moe_checks(self) -> list[tuple[bool, str]]:
        k, n = self.n_experts_per_token, self.n_experts
        return [
            (n >= 0, "n_experts must be >= 0"),
            ("moe" not in self.blocks or n > 0, "'E' blocks need n_experts > 0"),
            ("moe" not in self.blocks or 1 <= k <= n, f"n_experts_per_token {k} must be in [1, n_experts {n}]"),
            (self.moe_router in MOE_ROUTERS, f"moe_router must be one of {MOE_ROUTERS}"),
            (self.moe_d_ff > 0 and self.moe_shared_expert_d_ff >= 0, "moe_d_ff must be > 0, moe_shared_expert_d_ff >= 0"),
            (self.moe_capacity_factor >= 0, "moe_capacity_factor must be >= 0 (0 = no limit)"),
            (self.moe_aux_loss_coef >= 0, "moe_aux_loss_coef must be >= 0"),
            (self.moe_impl in ("fast", "ref"), "moe_impl must be 'fast' or 'ref'"),
        ]

    def _mamba_checks(self) -> list[tuple[bool, str]]:
        lo, hi = self.mamba_dt_limit
        return [
            (min(self.mamba_n_heads, self.mamba_head_dim, self.d_state, self.mamba_n_groups, self.d_conv,
                 self.mamba_chunk_size) > 0, "Mamba sizes must be positive"),
            (self.mamba_n_heads % self.mamba_n_groups == 0,
             f"mamba_n_heads {self.mamba_n_heads} must be a multiple of mamba_n_groups {self.mamba_n_groups}"),
            (0 < self.mamba_dt_min <= self.mamba_dt_max, "need 0 < mamba_dt_min <= mamba_dt_max"),
            (self.mamba_dt_init_floor > 0, "mamba_dt_init_floor must be positive"),
            (0 <= lo and (hi is None or lo < hi), "mamba_dt_limit must be (low, high) with 0 <= low < high"),
            (self.ssd_impl in SSD_IMPLS, f"ssd_impl must be one of {SSD_IMPLS}"),
        ]

    def _family_checks(self) -> list[tuple[bool, str]]:
        plain = self.family == "decoder"
        return [
            (self.family in FAMILIES, f"family must be one of {FAMILIES}"),
            (not plain or self.position != "relative", "relative (T5) positions exist for the encoder and seq2seq families"),
            (not plain or not (self.type_vocab_size or self.embed_norm or self.mlm_head or self.pooler),
             "type_vocab_size, embed_norm, mlm_head and pooler belong to the encoder and seq2seq families"),
            (self.family == "encoder" or not (self.mlm_head or self.pooler), "mlm_head and pooler are encoder options"),
            (self.type_vocab_size >= 0 and self.n_decoder_layers > 0, "type_vocab_size >= 0 and n_decoder_layers > 0"),
            (self.relative_buckets > 0 and self.relative_max_distance > 0, "relative buckets and distance must be positive"),
            (plain or "mamba" not in self.blocks,
             "Mamba blocks are causal: encoders and seq2seq models take attention, MLP and MoE blocks"),
        ]

    @property
    def mamba_d_inner(self) -> int:
        """Width of a Mamba-2 mixer's inner stream: heads x head dim."""
        return self.mamba_n_heads * self.mamba_head_dim

    @property
    def mamba_conv_dim(self) -> int:
        """Channels the causal conv runs over: x, then B and C of every group."""
        return self.mamba_d_inner + 2 * self.mamba_n_groups * self.d_state

    @property
    def n_mamba_layers(self) -> int:
        return self.blocks.count("mamba")

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

    def mamba_state_bytes(self, bytes_per_element: int = 4) -> int:
        """Bytes of conv and SSM state one sequence holds over all Mamba layers, at any length. The
        SSM state is kept in float32 at least (cache.MambaSlot), whatever the weights' dtype."""
        conv = self.mamba_conv_dim * (self.d_conv - 1) * bytes_per_element
        ssm = self.mamba_d_inner * self.d_state * max(bytes_per_element, 4)
        return self.n_mamba_layers * (conv + ssm)

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
