"""The decoder-only language model: every family hybridlm builds, chosen by `ModelConfig` alone."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..cache import Cache, CacheStep
from ..config import ConfigError, ModelConfig
from ..nn.attention import AttentionInputs, Attention, alibi_bias, allowed_keys
from ..nn.mamba2 import Mamba2
from ..nn.mlp import MLP
from ..nn.moe import MoE, MoEStats
from ..nn.norms import make_norm
from ..nn.positions import alibi_slopes, rope_cos_sin, rope_inv_freq, sinusoidal_embedding


class Block(nn.Module):
    """One residual block: pre-norm x + f(norm(x)) or post-norm norm(x + f(x))."""

    def __init__(self, kind: str, cfg: ModelConfig):
        super().__init__()
        self.kind = kind
        if kind == "attention":
            self.mixer = Attention(cfg)
        elif kind == "mlp":
            self.mixer = MLP(cfg)
        elif kind == "moe":
            self.mixer = MoE(cfg)
        elif kind == "mamba":
            self.mixer = Mamba2(cfg)
        else:
            raise ConfigError(f"block kind {kind!r} is not available in this build of hybridlm")
        self.norm = make_norm(cfg)
        self.post_norm = cfg.norm_position == "post"
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, slot, token_mask: torch.Tensor | None = None,
                moe_stats: MoEStats | None = None) -> torch.Tensor:
        h = x if self.post_norm else self.norm(x)
        if self.kind == "attention":
            h = self.mixer(h, inputs, slot)
        elif self.kind == "moe":  # padding takes no expert capacity; utilisation goes to moe_stats
            h = self.mixer(h, token_mask, moe_stats)
        elif self.kind == "mamba" and inputs.segments is not None:
            h = self.mixer.forward_packed(h, inputs.segments)  # no state crosses a packed boundary
        elif self.kind == "mamba" and getattr(slot, "varlen", False):
            h = slot.forward_varlen(self.mixer, h)  # the engine's flattened batch: the slot splits it per sequence
        elif self.kind == "mamba":  # decode from the slot's state, or prefill (padding kept out of it)
            one = slot is not None and h.shape[1] == 1 and token_mask is None
            h = self.mixer.step(h, slot) if one else self.mixer(h, slot, token_mask)
        else:
            h = self.mixer(h)
        x = x + self.dropout(h)
        return self.norm(x) if self.post_norm else x


def packed_positions(segments: torch.Tensor) -> torch.Tensor:
    """(B, T) ids of packed examples (equal ids contiguous) -> positions restarting at 0 in each."""
    t = segments.shape[1]
    idx = torch.arange(t, device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values  # start of each token's example
    return idx - first


def positions_without_cache(cfg: ModelConfig, batch: int, n_tokens: int,
                            attention_mask: torch.Tensor | None, device,
                            segments: torch.Tensor | None = None) -> CacheStep:
    """The CacheStep of a cache-free forward: keys are the tokens themselves. segments: see `forward`."""
    if segments is not None:
        if attention_mask is not None:
            raise ValueError("packed segments and an attention mask do not combine: pad packed rows at the end")
        pos = packed_positions(segments.to(device))
        return CacheStep(q_pos=pos, k_pos=pos, trivial=False, n_new=n_tokens, segments=segments.to(device))
    if attention_mask is None:
        pos = torch.arange(n_tokens, device=device).expand(batch, n_tokens)
        trivial = True
    else:
        valid = attention_mask.to(device=device, dtype=torch.bool)
        pos = (valid.long().cumsum(-1) - 1).masked_fill(~valid, -1)
        trivial = bool(valid.all())
    trivial &= cfg.sliding_window is None or n_tokens <= cfg.sliding_window
    return CacheStep(q_pos=pos, k_pos=pos, trivial=trivial, n_new=n_tokens)


def _init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases; norms keep their ones."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class Decoder(nn.Module):
    """Token embedding -> blocks from the layer pattern -> final norm -> LM head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.position == "learned" else None
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(kind, cfg) for kind in cfg.blocks)
        self.final_norm = make_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.apply(_init_weights)
        # derived from the config, so not saved with the weights
        self.register_buffer("rope_inv_freq", rope_inv_freq(cfg) if cfg.position == "rope" else None, persistent=False)
        self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_heads) if cfg.position == "alibi" else None, persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # derived tables stay float32 whatever dtype the weights move to: bf16 RoPE frequencies
        # put the rotation angle off by radians at position ~1000
        device = self.embed.weight.device
        if self.rope_inv_freq is not None:
            self.rope_inv_freq = rope_inv_freq(self.config).to(device)
        if self.alibi_slopes is not None:
            self.alibi_slopes = alibi_slopes(self.config.n_heads).to(device)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def new_cache(self, batch_size: int, **kwargs) -> Cache:
        """A cache for this model (see `Cache` for kind, max_len, window_only, full_view)."""
        return Cache(self.config, batch_size, dtype=self.dtype, device=self.device, **kwargs)

    def forward(self, input_ids: torch.Tensor, cache: Cache | None = None,
                attention_mask: torch.Tensor | None = None, last_only: bool = False,
                moe_stats: MoEStats | None = None, embeds: torch.Tensor | None = None,
                between: Callable | None = None, segments: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) int64 -> logits (B, T, V), or (B, 1, V) with last_only.

        cache: appended to in place. attention_mask (B, T): 1 for real tokens, 0 for (left) padding.
        moe_stats: if given, each MoE block appends its expert utilisation and load-balancing loss.
        embeds, between: how a vision-language model (multimodal/) sees in; see `forward_planned`.
        segments (B, T) int64, training without a cache: ids of the examples packed into each row
        (equal ids contiguous); each token attends, and each Mamba state runs, within its example
        only, and positions restart at every example: logits as if each ran alone.
        """
        b, t = input_ids.shape
        if segments is not None and cache is not None:
            raise ValueError("packed segments are for cache-free (training) forwards")
        if cache is None:
            step = positions_without_cache(self.config, b, t, attention_mask, input_ids.device, segments)
        else:
            step = cache.plan(t, attention_mask)
        token_mask = None if attention_mask is None else step.q_pos >= 0
        logits = self.forward_planned(input_ids, step, cache, token_mask, last_only, moe_stats, embeds, between)
        if cache is not None:
            cache.commit(step)
        return logits

    def forward_planned(self, input_ids: torch.Tensor, step: CacheStep, cache: Cache | None = None,
                        token_mask: torch.Tensor | None = None, last_only: bool = False,
                        moe_stats: MoEStats | None = None, embeds: torch.Tensor | None = None,
                        between: Callable | None = None) -> torch.Tensor:
        """`forward` once the cache has planned the step: writes the cache slots, does not advance it.

        The part of a forward with no Python-int bookkeeping, so `torch.compile` can trace it as one
        graph (generation/compiled.py). token_mask (B, T): True for real tokens, None if all are.
        embeds (B, T, d_model): the input embeddings to use instead of `embed(input_ids)` (visual
        tokens in place of image placeholders). between(i, x) -> x: runs before block i + 1, so
        between(-1, x) runs before the first (gated cross-attention layers inserted between the
        blocks of a frozen LM).
        """
        x = self.embed(input_ids) if embeds is None else embeds
        if self.pos_embed is not None:
            x = x + self.pos_embed(step.q_pos.clamp(min=0))
        elif self.config.position == "sinusoidal":
            x = x + sinusoidal_embedding(step.q_pos.clamp(min=0), self.config.d_model, x.dtype)
        x = self.embed_dropout(x)
        inputs = self._attention_inputs(step, x.dtype, plain=cache is None and token_mask is None)
        slots = cache.slots if cache is not None else [None] * len(self.blocks)
        if between is not None:
            x = between(-1, x)
        for i, (block, slot) in enumerate(zip(self.blocks, slots)):
            x = block(x, inputs, slot, token_mask, moe_stats)
            if between is not None:
                x = between(i, x)
        if last_only:
            x = x[:, -1:]
        elif step.out_index is not None:
            x = x[:, step.out_index]
        return self.lm_head(self.final_norm(x))

    def _attention_inputs(self, step: CacheStep, dtype: torch.dtype, plain: bool = False) -> AttentionInputs:
        """plain: no cache and no padding, so a non-trivial mask is only the sliding window (which a
        flash kernel rebuilds from indices: AttentionInputs.window)."""
        cos = sin = None
        if self.rope_inv_freq is not None:
            cos, sin = rope_cos_sin(self.rope_inv_freq, step.q_pos.clamp(min=0), dtype)
        if self.alibi_slopes is not None:
            allowed = allowed_keys(step.q_pos, step.k_pos, self.config.sliding_window, step.segments)
            return AttentionInputs(alibi_bias(allowed, step.q_pos, step.k_pos, self.alibi_slopes), False, cos, sin,
                                   segments=step.segments)
        if step.attend is not None:  # the engine's paged attention finds each sequence's keys itself
            return AttentionInputs(None, False, cos, sin, step.attend)
        if step.trivial:
            return AttentionInputs(None, step.n_new > 1, cos, sin)
        allowed = allowed_keys(step.q_pos, step.k_pos, self.config.sliding_window, step.segments)
        window = self.config.sliding_window if plain and step.segments is None else None
        return AttentionInputs(allowed, False, cos, sin, window=window, segments=step.segments)
