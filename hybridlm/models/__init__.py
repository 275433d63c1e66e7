"""Whole models assembled from nn/ by the config: decoder-only, encoder-only and encoder-decoder."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig


def build_model(cfg: ModelConfig) -> nn.Module:
    """A fresh model of the config's family: `Decoder`, `Encoder` or `Seq2Seq`."""
    if cfg.family == "encoder":
        from .encoder import Encoder

        return Encoder(cfg)
    if cfg.family == "seq2seq":
        from .seq2seq import Seq2Seq

        return Seq2Seq(cfg)
    from .decoder import Decoder

    return Decoder(cfg)
