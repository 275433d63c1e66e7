"""How the next token is chosen: `SamplingConfig` and the step that applies it to one row of logits."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .processors import apply_repetition_penalty, apply_temperature, min_p_filter, top_k_filter, top_p_filter


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    """A finite real number (bools, NaN and infinities are not)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 256  # most tokens generated per prompt (> 0)
    temperature: float = 1.0  # softmax(logits / temperature); 0 = greedy (argmax)
    top_k: int = 0  # keep only the k most probable tokens; 0 = off
    top_p: float = 1.0  # keep the smallest set of tokens with probability >= top_p; 1 = off
    min_p: float = 0.0  # drop tokens below min_p * the top token's probability; 0 = off
    repetition_penalty: float = 1.0  # CTRL penalty on tokens of prompt + output; 1 = off
    seed: int | None = None  # seeds a private torch.Generator; None = fresh entropy per call
    stop: tuple[str, ...] = ()  # a row ends at the first of these strings; it and what follows are cut
    eos_token_ids: tuple[int, ...] | None = None  # tokens that end a row; None = model config's eos
    ignore_eos: bool = False  # generate past EOS until max_new_tokens (benchmarks)

    def __post_init__(self) -> None:
        # accept lists (e.g. from JSON) and a lone EOS id, but store tuples so the config is hashable
        stop, eos = self.stop, self.eos_token_ids
        if isinstance(stop, (list, tuple)):
            object.__setattr__(self, "stop", tuple(stop))
        if _is_int(eos) or isinstance(eos, (list, tuple)):
            object.__setattr__(self, "eos_token_ids", (eos,) if _is_int(eos) else tuple(eos))
        checks = [
            (_is_int(self.max_new_tokens) and self.max_new_tokens > 0,
             f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}"),
            (_is_number(self.temperature) and self.temperature >= 0,
             f"temperature must be a number >= 0 (0 = greedy), got {self.temperature!r}"),
            (_is_int(self.top_k) and self.top_k >= 0, f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}"),
            (_is_number(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}"),
            (_is_number(self.min_p) and 0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p!r}"),
            (_is_number(self.repetition_penalty) and self.repetition_penalty > 0,
             f"repetition_penalty must be a number > 0 (1 = off), got {self.repetition_penalty!r}"),
            (self.seed is None or _is_int(self.seed), f"seed must be None or an int, got {self.seed!r}"),
            (isinstance(self.stop, tuple) and all(isinstance(s, str) and s for s in self.stop),
             f"stop must be a sequence of non-empty strings, got {self.stop!r}"),
            (self.eos_token_ids is None or (isinstance(self.eos_token_ids, tuple)
                                            and all(_is_int(t) and t >= 0 for t in self.eos_token_ids)),
             f"eos_token_ids must be None or ints >= 0, got {self.eos_token_ids!r}"),
            (isinstance(self.ignore_eos, bool), f"ignore_eos must be a bool, got {self.ignore_eos!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes) -> "SamplingConfig":
        return dataclasses.replace(self, **changes)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A private RNG on `device`: seeded for reproducible sampling, else from OS entropy.
    Never the global torch RNG, so sampling neither disturbs nor depends on other code."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def process_logits(logits: torch.Tensor, sampling: SamplingConfig, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the configured processors to logits (B, V) float32. seen (B, V) bool: tokens so far
    (needed only with a repetition penalty). Greedy decoding skips the warpers: they cannot move
    the argmax."""
    if sampling.repetition_penalty != 1.0:
        if seen is None:
            raise ValueError("a repetition penalty needs the mask of tokens seen so far")
        logits = apply_repetition_penalty(logits, seen, sampling.repetition_penalty)
    if sampling.greedy:
        return logits
    if sampling.temperature != 1.0:
        logits = apply_temperature(logits, sampling.temperature)
    if sampling.top_k:
        logits = top_k_filter(logits, sampling.top_k)
    if sampling.top_p < 1.0:
        logits = top_p_filter(logits, sampling.top_p)
    if sampling.min_p > 0.0:
        logits = min_p_filter(logits, sampling.min_p)
    return logits


def next_tokens(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None,
                seen: torch.Tensor | None = None) -> torch.Tensor:
    """Choose one token per row from logits (B, V) float32 -> (B,) int64, on the logits' device.

    No host synchronisation: the caller decides when to read the tokens back.
    """
    logits = process_logits(logits, sampling, seen)
    if sampling.greedy:
        return logits.argmax(dim=-1)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
