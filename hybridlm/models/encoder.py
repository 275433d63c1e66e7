"""The encoder-only model (BERT, Devlin et al. 2019): bidirectional attention over a padded batch.

Built from the same blocks as the decoder (`models/decoder.Block`: attention, MLP, MoE); what
differs is only what goes in and out. Inputs: token + position (learned, sinusoidal, RoPE or T5
relative) + token-type embeddings, optionally normalised (BERT's `embed_norm`). Attention sees every
real token of its row in both directions; padding keys are masked. Outputs: the final hidden states
(`encode`), sentence vectors (`pool`), BERT's pooler, and MLM logits (`forward`, with `mlm_head`).

Padding goes on the right (as BERT tokenizers pad): positions are 0 .. T - 1 in every row.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError, ModelConfig
from ..nn.attention import AttentionInputs
from ..nn.mlp import _ACTIVATIONS, is_glu
from ..nn.norms import make_norm
from ..nn.positions import rope_cos_sin, rope_inv_freq, sinusoidal_embedding
from ..nn.relative_bias import RelativePositionBias
from .decoder import Block, _init_weights

POOLINGS = ("mean", "cls")
ENCODER_POSITIONS = ("learned", "sinusoidal", "rope", "relative", "none")


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S) with 1 = real token -> bool (B, 1, 1, S) keys every query may see; None = no padding."""
    if attention_mask is None:
        return None
    return attention_mask.to(torch.bool)[:, None, None, :]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, kind: str = "mean") -> torch.Tensor:
    """Sentence vectors from hidden states (B, T, d) -> (B, d).

    mean: average over real tokens (sentence-transformers' mean pooling, padding excluded);
    cls: the first token's state.
    """
    if kind == "cls":
        return hidden[:, 0]
    if kind != "mean":
        raise ValueError(f"pooling must be one of {POOLINGS}, not {kind!r}")
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype)[..., None]  # (B, T, 1)
    # the 1e-9 floor is sentence-transformers': an all-padding row gives zeros, not NaN
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense -> activation -> norm -> vocabulary projection (+ bias)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        # a GLU's activation alone (BERT's head is not gated)
        self.act = _ACTIVATIONS["gelu" if is_glu(cfg.mlp) else cfg.mlp]
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=True)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(self.act(self.dense(hidden))))


class Pooler(nn.Module):
    """BERT's pooler: tanh(W h_CLS + b), trained by next-sentence prediction."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class Encoder(nn.Module):
    """Embeddings -> bidirectional blocks from the layer pattern -> final norm (pre-norm) -> heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.family == "decoder":
            raise ConfigError("an Encoder needs family 'encoder' or 'seq2seq' (this config is a decoder)")
        if cfg.position not in ENCODER_POSITIONS:
            raise ConfigError(f"encoder positions must be one of {ENCODER_POSITIONS}, not {cfg.position!r}")
        if cfg.sliding_window is not None:
            raise ConfigError("an encoder attends over the whole input: sliding_window must be None")
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.position == "learned" else None
        self.type_embed = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.embed_norm = make_norm(cfg) if cfg.embed_norm else None
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.rel_bias = RelativePositionBias(cfg, bidirectional=True) if cfg.position == "relative" else None
        self.blocks = nn.ModuleList(Block(kind, cfg) for kind in cfg.blocks)
        self.final_norm = make_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()
        self.pooler = Pooler(cfg) if cfg.pooler else None
        self.mlm = MLMHead(cfg) if cfg.mlm_head else None
        self.apply(_init_weights)
        if self.mlm is not None and cfg.tie_embeddings:
            self.mlm.lm_head.weight = self.embed.weight
        self.register_buffer("rope_inv_freq", rope_inv_freq(cfg) if cfg.position == "rope" else None, persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.rope_inv_freq is not None:  # float32 whatever the weights' dtype (see Decoder._apply)
            self.rope_inv_freq = rope_inv_freq(self.config).to(self.embed.weight.device)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) int64, right-padded; attention_mask (B, T) 1 = real token;
        token_type_ids (B, T) (zeros when None) -> final hidden states (B, T, d_model)."""
        b, t = input_ids.shape
        if t > self.config.max_seq_len and self.config.position in ("learned", "rope"):
            raise ValueError(f"input of {t} tokens exceeds the encoder's {self.config.max_seq_len} positions")
        pos = torch.arange(t, device=input_ids.device).expand(b, t)
        x = self.embed(input_ids)
        if self.pos_embed is not None:
            x = x + self.pos_embed(pos)
        elif self.config.position == "sinusoidal":
            x = x + sinusoidal_embedding(pos, self.config.d_model, x.dtype)
        if self.type_embed is not None:
            types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + self.type_embed(types)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.embed_dropout(x)
        inputs = self.attention_inputs(pos, attention_mask, x.dtype)
        token_mask = None if attention_mask is None else attention_mask.to(torch.bool)
        for block in self.blocks:
            x = block(x, inputs, None, token_mask)
        return self.final_norm(x)

    def attention_inputs(self, pos: torch.Tensor, attention_mask: torch.Tensor | None,
                         dtype: torch.dtype) -> AttentionInputs:
        """Bidirectional attention over real tokens: a padding mask, plus RoPE tables or T5's bias."""
        mask = padding_mask(attention_mask)
        cos = sin = None
        if self.rope_inv_freq is not None:
            cos, sin = rope_cos_sin(self.rope_inv_freq, pos, dtype)
        if self.rel_bias is not None:
            bias = self.rel_bias(pos, pos).to(dtype)  # (B, H, T, T)
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        return AttentionInputs(mask, False, cos, sin)

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """BERT's pooler output (B, d_model); needs `pooler` in the config."""
        if self.pooler is None:
            raise ConfigError("this encoder has no pooler (config pooler=False)")
        return self.pooler(hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """MLM logits (B, T, V) over the vocabulary at every position; needs `mlm_head`.
        Sentence encoders call `encode` (hidden states) and `pool` instead."""
        if self.mlm is None:
            raise ConfigError("this encoder has no MLM head (config mlm_head=False): use encode() for hidden states")
        return self.mlm(self.encode(input_ids, attention_mask, token_type_ids))


__all__ = ["Encoder", "MLMHead", "POOLINGS", "Pooler", "padding_mask", "pool"]
