"""Sliding-window perplexity: the one scorer the evaluation CLI, the compression report and the
trainer's validation share.

The definition is the one in the transformers documentation ("Perplexity of fixed-length
models"): windows of `window` tokens start every `stride` tokens; each window scores only the
tokens no earlier window scored, the rest of it is context; a token is scored by the logits at the
position before it, so the very first token of the text is never scored.

    perplexity = exp(total NLL / scored tokens)
    bits per byte = total NLL / ln 2 / UTF-8 bytes of the text (when the text is known)

Every scored token counts once, with its exact log-probability. (The documentation's loop weights
each window's mean loss by `valid labels - 1`, which is one token short for every window after the
first; its loss itself, as the model computes it, averages over all of them. We sum exact NLLs.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float  # total negative log-likelihood of the scored tokens, in nats
    tokens: int  # scored tokens
    windows: int
    window: int
    stride: int
    bits_per_byte: float | None = None  # when the text (so its bytes) is known

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens

    def as_dict(self) -> dict:
        return asdict(self)


def window_plan(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored) per window: the model reads ids[begin:end] and scores the tokens
    at positions first..end-1, none of which an earlier window scored."""
    if window < 2:
        raise ValueError(f"the window must hold at least 2 tokens, not {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"the stride must be between 1 and the window ({window}), not {stride}")
    plan, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        first = max(prev_end, begin + 1)
        if first < end:
            plan.append((begin, end, first))
        prev_end = end
        if end == n_tokens:
            break
    return plan


def _batches(plan: list[tuple[int, int, int]], batch_size: int) -> Iterable[list[tuple[int, int, int]]]:
    """Consecutive windows of equal length, at most batch_size at a time."""
    chunk: list[tuple[int, int, int]] = []
    for w in plan:
        if chunk and (len(chunk) == batch_size or w[1] - w[0] != chunk[0][1] - chunk[0][0]):
            yield chunk
            chunk = []
        chunk.append(w)
    if chunk:
        yield chunk


@torch.inference_mode()
def perplexity(model: nn.Module, ids: Sequence[int] | torch.Tensor, window: int = 1024, stride: int | None = None,
               batch_size: int = 1, n_bytes: int | None = None,
               progress: Callable[[Iterable], Iterable] | None = None) -> PerplexityResult:
    """Sliding-window perplexity of `model` (ids (B, T) -> logits (B, T, V), or an object with
    .logits) on the token ids (a 1-D sequence). stride defaults to window // 2. n_bytes: the text's
    UTF-8 length, for bits per byte. The model is only read (no cache, no state)."""
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1).cpu()
    stride = stride or max(1, window // 2)
    if ids.numel() < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, got {ids.numel()}")
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    if isinstance(limit, int) and min(window, ids.numel()) > limit:  # the longest window actually read
        raise ValueError(f"the window ({window} tokens) is longer than the model's context ({limit})")
    device = next(model.parameters()).device
    plan = window_plan(ids.numel(), window, stride)
    total, count = 0.0, 0
    for chunk in (progress or iter)(list(_batches(plan, batch_size))):
        out = model(torch.stack([ids[b:e] for b, e, _ in chunk]).to(device))
        logits = getattr(out, "logits", out)  # (B, T, V)
        for row, (b, e, first) in enumerate(chunk):
            scores = logits[row, first - 1 - b:e - 1 - b].float()
            total += F.cross_entropy(scores, ids[first:e].to(device), reduction="sum").item()
            count += e - first
    bpb = None if not n_bytes else total / math.log(2) / n_bytes
    return PerplexityResult(math.exp(total / count), total, count, len(plan), window, stride, bpb)


def text_perplexity(model: nn.Module, tokenizer, text: str, window: int = 1024, stride: int | None = None,
                    batch_size: int = 1, max_tokens: int | None = None,
                    progress: Callable[[Iterable], Iterable] | None = None) -> PerplexityResult:
    """`perplexity` of a text tokenized with `tokenizer` (its own BOS rule). max_tokens: score only
    the first max_tokens tokens (bits per byte then counts the bytes those tokens decode to)."""
    ids = tokenizer.encode(text)
    n_bytes = len(text.encode("utf-8"))
    if max_tokens is not None and len(ids) > max_tokens:
        ids = ids[:max_tokens]
        n_bytes = len(tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8"))
    return perplexity(model, ids, window, stride, batch_size, n_bytes, progress)
