"""Sentence embeddings from an encoder checkpoint, as sentence-transformers computes them.

A sentence-transformers directory says how: `sentence_bert_config.json` (max_seq_length: longer
inputs are truncated), `1_Pooling/config.json` (mean or CLS pooling) and `modules.json` (a
Normalize module: unit-length vectors). Texts are tokenised as [CLS] text [SEP], batched by length
(similar lengths together, so little padding is computed) and returned in the order given.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..models.encoder import Encoder, pool
from ..tokenizer import Tokenizer

DEFAULT_EMBEDDER = "all-minilm-l6-v2"


class EmbedError(ValueError):
    """A model that cannot embed sentences, or input it cannot embed."""


@dataclass
class SentenceSettings:
    max_tokens: int = 512  # inputs are cut to this many tokens, [CLS] and [SEP] included
    pooling: str = "mean"  # "mean" or "cls"
    normalize: bool = True  # scale each vector to unit L2 norm


def read_sentence_settings(path: str | os.PathLike, max_positions: int) -> SentenceSettings:
    """sentence-transformers' settings from an HF directory; plain BERT directories get mean pooling,
    normalisation and the model's own position limit."""
    path = Path(path)
    settings = SentenceSettings(max_tokens=max_positions)
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        settings.max_tokens = min(int(json.loads(st_config.read_text()).get("max_seq_length", max_positions)),
                                  max_positions)
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file():
        p = json.loads(pooling.read_text())
        modes = [m for m in ("mean_tokens", "cls_token", "max_tokens", "mean_sqrt_len_tokens") if p.get(f"pooling_mode_{m}")]
        if modes not in (["mean_tokens"], ["cls_token"]):
            raise EmbedError(f"{pooling}: pooling {modes} is not supported (one of mean_tokens, cls_token)")
        settings.pooling = "mean" if modes == ["mean_tokens"] else "cls"
    modules = path / "modules.json"
    if modules.is_file():
        kinds = [m.get("type", "") for m in json.loads(modules.read_text())]
        settings.normalize = any(k.endswith("Normalize") for k in kinds)
    return settings


class SentenceEncoder:
    """An `Encoder` with its tokenizer and sentence-transformers' pooling settings."""

    def __init__(self, model: Encoder, tokenizer: Tokenizer, settings: SentenceSettings, name: str):
        if not isinstance(model, Encoder):
            raise EmbedError(f"{name} is not an encoder model (got {type(model).__name__}); embeddings need one, "
                             f"e.g. {DEFAULT_EMBEDDER}")
        self.model, self.settings, self.name = model.eval(), settings, name
        self.backend = tokenizer.backend
        # the file's own truncation/padding (MiniLM's says: pad everything to 128) would change the
        # vectors; we cut to max_tokens and pad per batch ourselves
        self.backend.no_truncation()
        self.backend.no_padding()
        self.prefix, self.suffix = _special_wrapping(self.backend)
        self.pad_id = tokenizer.pad_token_id or 0

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """[CLS] + tokens + [SEP] per text, the tokens cut so the whole fits max_tokens."""
        room = self.settings.max_tokens - len(self.prefix) - len(self.suffix)
        return [self.prefix + e.ids[:room] + self.suffix
                for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """texts -> float32 (N, dim), row i for texts[i]; unit length when the model normalises."""
        if batch_size < 1:
            raise EmbedError("batch size must be at least 1")
        ids = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # longest first, as sentence-transformers
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ids), desc="embed", unit="text", file=sys.stderr, disable=not progress,
                   dynamic_ncols=True)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            out[rows] = self._embed_batch([ids[i] for i in rows])
            bar.update(len(rows))
        bar.close()
        return out

    def _embed_batch(self, batch: list[list[int]]) -> np.ndarray:
        longest = max(len(r) for r in batch)
        device = self.model.device
        input_ids = torch.tensor([r + [self.pad_id] * (longest - len(r)) for r in batch], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in batch], device=device)
        hidden = self.model.encode(input_ids, mask if longest > min(len(r) for r in batch) else None)
        vectors = pool(hidden.float(), mask, self.settings.pooling)
        if self.settings.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors.cpu().numpy()


def _special_wrapping(backend) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's post-processor puts before and after a text ([CLS] and [SEP] for BERT)."""
    plain = backend.encode("hello", add_special_tokens=False).ids
    full = backend.encode("hello", add_special_tokens=True).ids
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return full[:i], full[i + len(plain):]
    raise EmbedError("cannot tell which special tokens the tokenizer adds around a text")


def load_sentence_encoder(name_or_path: str | os.PathLike = DEFAULT_EMBEDDER, device: str | torch.device = "cpu",
                          dtype: torch.dtype | None = torch.float32) -> SentenceEncoder:
    """A registry name (all-minilm-l6-v2) or an HF BERT directory -> SentenceEncoder."""
    from ..checkpoints.registry import REGISTRY, describe_source, load_model

    if describe_source(name_or_path)[0].family != "encoder":  # refuse before reading any weights
        raise EmbedError(f"{name_or_path} is not an encoder model; embeddings need one, e.g. {DEFAULT_EMBEDDER}")
    loaded = load_model(name_or_path, dtype=dtype, device=device)
    if not isinstance(loaded.model, Encoder):
        raise EmbedError(f"{loaded.name} is not an encoder model; embeddings need one, e.g. {DEFAULT_EMBEDDER}")
    settings = read_sentence_settings(loaded.source, loaded.model.config.max_seq_len)
    # the name an index records, and loads the model back by: the registry name, or the absolute path
    name = str(name_or_path) if str(name_or_path) in REGISTRY else str(Path(name_or_path).resolve())
    return SentenceEncoder(loaded.model, loaded.tokenizer, settings, name)
