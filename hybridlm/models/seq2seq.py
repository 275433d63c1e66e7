"""The encoder-decoder model: the original Transformer (Vaswani et al. 2017) and T5 (Raffel et al. 2020).

The encoder is `models/encoder.Encoder`. Each decoder layer is three residual blocks: causal
self-attention (`Block("attention")`, with a KV cache slot), cross-attention to the encoder output
(`CrossBlock`) and an MLP (`Block("mlp")`), pre- or post-norm by the config. Input embeddings are
shared by both stacks; T5 v1.0 rescales the decoder output by d_model^-0.5 before its tied LM head.

    original Transformer: position="sinusoidal", norm_position="post", norm="layernorm", mlp="relu"
    T5 (v1.1):            position="relative", norm="rmsnorm" (pre-norm, no biases), mlp="geglu"

Generation encodes the source once (`bind`): the encoder output and every layer's cross-attention
keys and values are computed once per request and held by the cache (`Seq2SeqCache`), which
`generation/` drives as it drives a decoder-only model's (greedy, sampling and beam search alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..cache import Cache, CacheStep
from ..config import ConfigError, ModelConfig
from ..nn.attention import AttentionInputs, allowed_keys
from ..nn.cross_attention import CrossAttention
from ..nn.norms import make_norm
from ..nn.positions import sinusoidal_embedding
from ..nn.relative_bias import RelativePositionBias
from .decoder import Block, _init_weights, positions_without_cache
from .encoder import Encoder, padding_mask

SEQ2SEQ_POSITIONS = ("learned", "sinusoidal", "relative", "none")


@dataclass
class EncodedSource:
    """What the decoder reads from the encoder, computed once per source batch."""

    hidden: torch.Tensor  # (B, S, d_model) encoder output
    mask: torch.Tensor | None  # bool (B, 1, 1, S), True = a real source token; None = no padding
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per decoder layer: k, v (B, H_kv, S, D)


class CrossBlock(nn.Module):
    """Residual cross-attention: pre-norm x + f(norm(x)) or post-norm norm(x + f(x))."""

    kind = "cross"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mixer = CrossAttention(cfg)
        self.norm = make_norm(cfg)
        self.post_norm = cfg.norm_position == "post"
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        h = self.mixer(x if self.post_norm else self.norm(x), kv, mask)
        x = x + self.dropout(h)
        return self.norm(x) if self.post_norm else x


class Seq2SeqCache(Cache):
    """A decoder-only `Cache` over the decoder's self-attention layers, plus the encoded source.

    Beam search reorders rows with `reorder`: the source's mask and cross K/V move with them (a
    batch-1 source fans out to the beams on the first reorder).
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, source: EncodedSource, **kwargs):
        super().__init__(cfg.replace(layer_pattern="*" * cfg.n_decoder_layers), batch_size, **kwargs)
        self.source_mask, self.cross_kv = source.mask, source.cross_kv

    def reorder(self, rows: torch.Tensor) -> None:
        super().reorder(rows)
        self.cross_kv = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.cross_kv]
        if self.source_mask is not None:
            self.source_mask = self.source_mask.index_select(0, rows)

    def nbytes(self) -> int:
        return super().nbytes() + sum(k.numel() * k.element_size() * 2 for k, _ in self.cross_kv)


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.family != "seq2seq":
            raise ConfigError(f"a Seq2Seq model needs family 'seq2seq', not {cfg.family!r}")
        if cfg.position not in SEQ2SEQ_POSITIONS:
            raise ConfigError(f"seq2seq positions must be one of {SEQ2SEQ_POSITIONS}, not {cfg.position!r}")
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.dec_pos_embed = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.position == "learned" else None
        self.dec_embed_norm = make_norm(cfg) if cfg.embed_norm else None
        self.dec_rel_bias = RelativePositionBias(cfg, bidirectional=False) if cfg.position == "relative" else None
        self.embed_dropout = nn.Dropout(cfg.dropout)
        # decoder layer i is blocks 3i (self-attention), 3i + 1 (cross-attention), 3i + 2 (MLP)
        self.decoder_blocks = nn.ModuleList(
            block for _ in range(cfg.n_decoder_layers) for block in (Block("attention", cfg), CrossBlock(cfg), Block("mlp", cfg)))
        self.final_norm = make_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        for module in (self.dec_pos_embed, self.dec_rel_bias, self.decoder_blocks, self.lm_head):
            if module is not None:
                module.apply(_init_weights)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.encoder.embed.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    # -- the two halves ----------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> EncodedSource:
        """Source ids (B, S), right-padded, attention_mask (B, S) 1 = real -> the encoder output and
        every decoder layer's cross-attention K/V."""
        hidden = self.encoder.encode(input_ids, attention_mask)
        cross = [block.mixer.project_memory(hidden) for block in self.decoder_blocks[1::3]]
        return EncodedSource(hidden, padding_mask(attention_mask), cross)

    def decode(self, input_ids: torch.Tensor, source_mask: torch.Tensor | None,
               cross_kv: list[tuple[torch.Tensor, torch.Tensor]], cache: Cache | None = None,
               attention_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Decoder ids (B, T) -> logits (B, T, V) ((B, 1, V) with last_only). With a cache, its
        self-attention slots are appended to and its positions advance by T."""
        b, t = input_ids.shape
        if cache is None:
            step = positions_without_cache(self.config, b, t, attention_mask, input_ids.device)
        else:
            step = cache.plan(t, attention_mask)
        token_mask = None if attention_mask is None else step.q_pos >= 0
        x = self.encoder.embed(input_ids)
        if self.dec_pos_embed is not None:
            x = x + self.dec_pos_embed(step.q_pos.clamp(min=0))
        elif self.config.position == "sinusoidal":
            x = x + sinusoidal_embedding(step.q_pos.clamp(min=0), self.config.d_model, x.dtype)
        if self.dec_embed_norm is not None:
            x = self.dec_embed_norm(x)
        x = self.embed_dropout(x)
        inputs = self._self_attention_inputs(step, x.dtype)
        slots = cache.slots if cache is not None else [None] * self.config.n_decoder_layers
        for i, slot in enumerate(slots):
            attn, cross, mlp = self.decoder_blocks[3 * i:3 * i + 3]
            x = attn(x, inputs, slot, token_mask)
            x = cross(x, cross_kv[i], source_mask)
            x = mlp(x, inputs, None, token_mask)
        if cache is not None:
            cache.commit(step)
        if last_only:
            x = x[:, -1:]
        x = self.final_norm(x)
        if self.config.scale_decoder_output:  # T5 v1.0: the tied matrix reads a rescaled output (Mesh TensorFlow)
            x = x * self.config.d_model ** -0.5
        return self.lm_head(x)

    def _self_attention_inputs(self, step: CacheStep, dtype: torch.dtype) -> AttentionInputs:
        if self.dec_rel_bias is not None:
            allowed = allowed_keys(step.q_pos, step.k_pos, None)
            bias = self.dec_rel_bias(step.q_pos, step.k_pos).to(dtype)  # (B, H, T, S)
            return AttentionInputs(bias.masked_fill(~allowed, float("-inf")), False)
        if step.trivial:
            return AttentionInputs(None, step.n_new > 1)
        return AttentionInputs(allowed_keys(step.q_pos, step.k_pos, None), False)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: source ids (B, S) (+ padding mask), decoder inputs (B, T) -> logits (B, T, V).
        Decoder inputs are right-padded: causal attention keeps real tokens from seeing the padding."""
        source = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, source.mask, source.cross_kv)

    # -- generation ---------------------------------------------------------------------------
    def bind_source(self, ids: list[int]) -> "BoundSeq2Seq":
        """One tokenised source text -> `bind`, with EOS appended as T5's tokenizer does (our
        tokenizer leaves post-processing to the model)."""
        eos = self.config.eos_token_id
        ids = list(ids) + ([eos] if eos is not None and (not ids or ids[-1] != eos) else [])
        if not ids:
            raise ValueError("the source is empty")
        return self.bind(torch.tensor([ids], device=self.device))

    def bind(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> "BoundSeq2Seq":
        """Encode a source batch once; the result generates like a decoder-only model (see module doc)."""
        with torch.inference_mode():
            return BoundSeq2Seq(self, self.encode(input_ids, attention_mask))


class BoundSeq2Seq:
    """A Seq2Seq with its source encoded: the decoder-only interface `generation/` drives (config,
    device, new_cache, __call__). Prompts are decoder prompts: [decoder_start_token_id] per source."""

    def __init__(self, model: Seq2Seq, source: EncodedSource):
        self.model, self.source = model, source
        self.config = model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def start_ids(self) -> list[list[int]]:
        """The decoder prompt of every source row."""
        start = self.config.decoder_start_token_id
        if start is None:
            raise ConfigError("this seq2seq config has no decoder_start_token_id")
        return [[start]] * self.source.hidden.shape[0]

    def new_cache(self, batch_size: int, **kwargs) -> Seq2SeqCache:
        rows = self.source.hidden.shape[0]
        if batch_size != rows and rows != 1:
            raise ValueError(f"{batch_size} decoder rows for {rows} encoded sources")
        cache = Seq2SeqCache(self.config, rows, self.source, dtype=self.dtype, device=self.device, **kwargs)
        if batch_size != rows:  # one source, several rows: every row reads it
            cache.reorder(torch.zeros(batch_size, dtype=torch.long, device=self.device))
        return cache

    def __call__(self, input_ids: torch.Tensor, cache: Seq2SeqCache, attention_mask: torch.Tensor | None = None,
                 last_only: bool = False) -> torch.Tensor:
        return self.model.decode(input_ids, cache.source_mask, cache.cross_kv, cache, attention_mask, last_only)
