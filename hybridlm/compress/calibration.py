"""Calibration data: token sequences the calibrated quantizers (GPTQ, AWQ, ...) run through the model.

The default corpus (data/default_corpus.py) is split once, here, so that calibration and
evaluation never share text: the pydoc topics are taken in sorted order and every
`HELDOUT_EVERY`-th one (indices 3, 7, 11, ...) is held out for perplexity (`heldout_text`). The
calibration text is the other topics plus standard-library sources (half prose, half code, so
the statistics see both kinds of text the default corpus has).

A user file is plain text, or JSON Lines with a "text" field per line (.jsonl).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import CompressError

HELDOUT_EVERY = 4
DEFAULT_TOKENS = 16384
DEFAULT_SEQ_LEN = 512


@dataclass
class Calibration:
    """ids (N, L) int64: N sequences of L tokens; source says where they came from."""

    ids: torch.Tensor
    source: str

    @property
    def n_tokens(self) -> int:
        return self.ids.numel()

    def batches(self, tokens_per_batch: int = 2048) -> list[torch.Tensor]:
        """The sequences in batches of about `tokens_per_batch` tokens (every batch the same size
        but possibly the last)."""
        per = max(1, tokens_per_batch // self.ids.shape[1])
        return list(self.ids.split(per))


def _pydoc_topics() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return [(name, topics[name]) for name in sorted(topics)]


def heldout_text() -> str:
    """The held-out slice of the default corpus: every HELDOUT_EVERY-th pydoc topic (sorted order).
    No calibration set built here reads it; perplexity of quantized models is measured on it."""
    return "\n\n".join(text for i, (_, text) in enumerate(_pydoc_topics()) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1)


def calibration_prose() -> str:
    """The pydoc topics not held out."""
    return "\n\n".join(text for i, (_, text) in enumerate(_pydoc_topics()) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1)


def _code_text(max_chars: int) -> str:
    from ..data.default_corpus import code_files

    parts, size = [], 0
    for path in code_files():  # sorted walk: the same files on every run of one Python version
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text)
        if size >= max_chars:
            break
    return "\n\n".join(parts)


def read_calibration_file(path: str | Path) -> str:
    """The text of a user calibration file (.jsonl: one {"text": ...} per line; anything else: text)."""
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"calibration file {path} not found")
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() in (".jsonl", ".json"):
        texts = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CompressError(f"calibration file {path} line {n} is not JSON: {e.msg}") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise CompressError(f"calibration file {path} line {n} has no string \"text\" field")
            texts.append(record["text"])
        raw = "\n\n".join(texts)
    if not raw.strip():
        raise CompressError(f"calibration file {path} is empty")
    return raw


def sequences(ids: list[int], n_tokens: int, seq_len: int, source: str) -> Calibration:
    """Cut `ids` into at most n_tokens // seq_len sequences of seq_len tokens, spread evenly over the
    text; a text shorter than one sequence gives one shorter sequence."""
    if n_tokens < 1 or seq_len < 2:
        raise CompressError(f"calibration needs at least one sequence of 2 tokens (got {n_tokens} tokens, length {seq_len})")
    if len(ids) < 2:
        raise CompressError(f"calibration text from {source} has fewer than 2 tokens")
    if len(ids) < seq_len:
        return Calibration(torch.tensor([ids], dtype=torch.long), source)
    available = len(ids) // seq_len
    wanted = max(1, min(available, n_tokens // seq_len))
    starts = torch.linspace(0, available - 1, wanted).round().long() * seq_len
    t = torch.tensor(ids, dtype=torch.long)
    return Calibration(torch.stack([t[s:s + seq_len] for s in starts.tolist()]), source)


def build_calibration(tokenizer, path: str | Path | None = None, n_tokens: int = DEFAULT_TOKENS,
                      seq_len: int = DEFAULT_SEQ_LEN) -> Calibration:
    """Calibration sequences from `path` or, if None, from the default corpus (minus the held-out
    slice), tokenized with the model's tokenizer. Errors (missing or empty file) are CompressError."""
    if path is not None:
        text = read_calibration_file(path)
        return sequences(tokenizer.encode(text), n_tokens, seq_len, str(path))
    # about 4 characters a token: read only what the requested tokens need, twice over
    prose = tokenizer.encode(calibration_prose())
    code = tokenizer.encode(_code_text(max_chars=8 * n_tokens))
    half = n_tokens // 2
    a = sequences(prose, max(half, seq_len), seq_len, "prose")
    b = sequences(code, max(n_tokens - half, seq_len), seq_len, "code")
    ids = torch.cat([a.ids, b.ids]) if a.ids.shape[1] == b.ids.shape[1] else a.ids
    return Calibration(ids, "default corpus (pydoc topics not held out + stdlib sources)")
