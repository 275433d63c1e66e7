"""The `generate` loop: batched prompts of any lengths -> one prefill forward -> one token per step.

Prompts are left-padded into one (B, T) batch, so every row's next token sits in the last column
and one cached forward of (B, 1) tokens advances all rows together. The cache tracks each row's
positions, so padding changes neither positions nor attention. Rows that finish keep riding along
(their tokens are ignored) until every row is done: the batch shape never changes, so no tensor is
reallocated between steps.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from .processors import seen_mask
from .sampling import SamplingConfig, make_generator, next_tokens
from .stopping import Decode, StopWatcher

FINISH_REASONS = ("eos", "stop", "length")


@dataclass
class GenerationStats:
    prompt_tokens: int  # real prompt tokens over all rows (padding not counted)
    new_tokens: int  # tokens sampled over all rows, final EOS and stop-cut tokens included
    prefill_s: float  # seconds from the call to the first tokens on the host (prompt forward + sample)
    decode_s: float  # seconds of every later step
    cache_bytes: int  # bytes held by the cache tensors at the end (allocated, not just filled)
    batch_size: int  # rows generated together

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """New tokens after each row's first (the prefill makes the first) per decode second."""
        decoded = self.new_tokens - self.batch_size
        return decoded / self.decode_s if self.decode_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "prefill_tokens_per_s": self.prefill_tokens_per_s,
                "decode_tokens_per_s": self.decode_tokens_per_s}


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # generated ids per row; no EOS; cut before a stop string
    finish_reasons: list[str]  # per row: "eos", "stop" or "length"
    texts: list[str] | None  # decoded output per row (cut exactly at a stop string); None without decode
    stats: GenerationStats


@dataclass
class _Row:
    """One prompt's progress."""

    tokens: list[int] = field(default_factory=list)
    finish: str | None = None
    text: str | None = None  # set when a stop string cut the text


def _check(model: nn.Module, prompts: list[list[int]], sampling: SamplingConfig, decode: Decode | None) -> None:
    cfg = model.config
    if not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    if not prompts:
        raise ValueError("generate needs at least one prompt")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        if min(prompt) < 0 or max(prompt) >= cfg.vocab_size:
            raise ValueError(f"prompt {i} has token ids outside [0, {cfg.vocab_size})")
    longest = max(len(p) for p in prompts)
    if longest + sampling.max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"prompt ({longest} tokens) + max_new_tokens ({sampling.max_new_tokens}) exceeds "
                         f"the model's context of {cfg.max_seq_len} tokens")
    if sampling.stop and decode is None:
        raise ValueError("stop strings need a decode function (token ids -> text)")


def eos_ids(model: nn.Module, eos_token_ids: tuple[int, ...] | None) -> frozenset[int]:
    """The EOS set: as given, or the model config's eos_token_id when None."""
    if eos_token_ids is None:
        eos = model.config.eos_token_id
        return frozenset() if eos is None else frozenset((eos,))
    return frozenset(eos_token_ids)


def left_pad(prompts: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) ids padded on the left with token 0, and the (B, T) mask (1 = real); None if no padding."""
    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (longest - len(p)) + list(p) for p in prompts], dtype=torch.long)
    if all(len(p) == longest for p in prompts):
        return ids.to(device), None
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    return ids.to(device), mask.to(device)


def generate(model: nn.Module, prompts: list[list[int]], sampling: SamplingConfig, *,
             cache_kind: str = "dynamic", decode: Decode | None = None,
             on_token: Callable[[int, int], None] | None = None, kv_dtype: str = "float") -> GenerationResult:
    """Continue every prompt (lists of token ids, any lengths) by up to `sampling.max_new_tokens`.

    decode: token ids -> text; needed for stop strings, and gives `GenerationResult.texts`.
    on_token(row, token_id): called for each output token as soon as it is sampled (not for EOS).
        A stop string found later may cut tokens already streamed; `result.tokens` is final.
    kv_dtype: "float" (K/V in the model's dtype) or "int8" (kv_quant.py: 1/4 of float32's bytes).
    The model should be in eval mode; it is not modified. Runs under torch.inference_mode.
    """
    _check(model, prompts, sampling, decode)
    eos = frozenset() if sampling.ignore_eos else eos_ids(model, sampling.eos_token_ids)
    device, batch, longest = model.device, len(prompts), max(len(p) for p in prompts)
    rows = [_Row() for _ in prompts]
    watcher = StopWatcher(sampling.stop, decode) if sampling.stop else None
    generator = None if sampling.greedy else make_generator(sampling.seed, device)
    start = time.perf_counter()
    with torch.inference_mode():
        kv = {} if kv_dtype == "float" else {"kv_dtype": kv_dtype}  # models whose caches have no such option still work
        cache = model.new_cache(batch, kind=cache_kind, max_len=longest + sampling.max_new_tokens, **kv)
        seen = seen_mask(prompts, model.config.vocab_size, device) if sampling.repetition_penalty != 1.0 else None
        input_ids, attention_mask = left_pad(prompts, device)
        # the whole prompt in one forward; the LM head runs on the last position only
        logits = model(input_ids, cache, attention_mask=attention_mask, last_only=True)[:, -1]  # (B, V)
        new_tokens, first_done = 0, start
        for step in range(sampling.max_new_tokens):
            chosen = next_tokens(logits.float(), sampling, generator, seen)  # (B,)
            ids = chosen.tolist()  # the step's one host sync: EOS, stop strings and streaming need it
            if step == 0:
                first_done = time.perf_counter()
            new_tokens += _accept(rows, ids, eos, watcher, on_token)
            if step + 1 == sampling.max_new_tokens or all(r.finish for r in rows):
                break
            if seen is not None:
                seen.scatter_(1, chosen[:, None], True)
            logits = model(chosen[:, None], cache, last_only=True)[:, -1]
        end = time.perf_counter()
    stats = GenerationStats(
        prompt_tokens=sum(len(p) for p in prompts), new_tokens=new_tokens, prefill_s=first_done - start,
        decode_s=end - first_done, cache_bytes=cache.nbytes(), batch_size=batch)
    return _result(rows, decode, stats)


def _result(rows: list[_Row], decode: Decode | None, stats: GenerationStats) -> GenerationResult:
    """The rows as a result: rows still going ran out of tokens ("length"); texts when `decode`."""
    for row in rows:
        row.finish = row.finish or "length"
    texts = None
    if decode is not None:
        texts = [row.text if row.text is not None else decode(row.tokens) for row in rows]
    return GenerationResult([r.tokens for r in rows], [r.finish for r in rows], texts, stats)


def _accept(rows: list[_Row], ids: list[int], eos: frozenset[int], watcher: StopWatcher | None,
            on_token: Callable[[int, int], None] | None) -> int:
    """Give each unfinished row its sampled token; finish rows on EOS or a stop string.
    Returns how many tokens live rows received."""
    received = 0
    for i, (row, token) in enumerate(zip(rows, ids)):
        if row.finish:
            continue
        received += 1
        if token in eos:
            row.finish = "eos"
            continue
        row.tokens.append(token)
        if on_token is not None:
            on_token(i, token)
        if watcher is not None:
            hit = watcher.check(row.tokens)
            if hit is not None:
                row.tokens, row.text = hit
                row.finish = "stop"
    return received
