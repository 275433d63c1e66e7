"""What a caller asks for (`RequestParams`), what it gets back each step (`StepOutput`), and the
engine's own record of one sequence (`Request`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..generation.sampling import SamplingConfig

MAX_TOP_LOGPROBS = 20  # OpenAI's limit


class QueueFullError(RuntimeError):
    """More requests are waiting than `EngineConfig.max_queue` allows (the server answers 429)."""


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class RequestParams:
    """Sampling and stopping for one request. Fields follow OpenAI's (and vLLM's) meanings."""

    max_tokens: int = 256  # most tokens to generate (> 0)
    temperature: float = 1.0  # 0 = greedy (exact argmax)
    top_p: float = 1.0  # nucleus mass kept; 1 = off
    top_k: int = 0  # most probable tokens kept; 0 = off
    min_p: float = 0.0  # drop tokens below min_p x the top probability; 0 = off
    presence_penalty: float = 0.0  # subtracted once from the logit of every token already generated
    frequency_penalty: float = 0.0  # subtracted per occurrence in the generated tokens
    repetition_penalty: float = 1.0  # CTRL penalty over prompt + generated tokens; 1 = off
    seed: int | None = None  # seeds this request's own torch.Generator; None = fresh entropy
    stop: tuple[str, ...] = ()  # generation ends at the first of these strings; it is cut from the text
    stop_token_ids: tuple[int, ...] = ()  # tokens that end generation like EOS (not part of the output)
    eos_token_ids: tuple[int, ...] | None = None  # None: the tokenizer's EOS and end-of-turn tokens
    ignore_eos: bool = False  # generate past EOS (benchmarks)
    logprobs: bool = False  # report each generated token's log-probability
    top_logprobs: int = 0  # and this many most likely alternatives (0..20); needs logprobs
    skip_special_tokens: bool = True  # leave special tokens out of the text
    cache_salt: str | None = None  # keeps this request's prefix cache apart from other salts (tenants)

    def __post_init__(self) -> None:
        for name in ("stop", "stop_token_ids"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.eos_token_ids, list):
            object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))
        self.sampling()  # the shared checks (temperature, top_p, ...) raise ValueError here
        checks = [
            (_is_number(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
             f"presence_penalty must be in [-2, 2], got {self.presence_penalty!r}"),
            (_is_number(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
             f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty!r}"),
            (isinstance(self.stop_token_ids, tuple) and all(_is_int(t) and t >= 0 for t in self.stop_token_ids),
             f"stop_token_ids must be ints >= 0, got {self.stop_token_ids!r}"),
            (isinstance(self.logprobs, bool), f"logprobs must be a bool, got {self.logprobs!r}"),
            (_is_int(self.top_logprobs) and 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS,
             f"top_logprobs must be an int in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs!r}"),
            (self.top_logprobs == 0 or self.logprobs, "top_logprobs needs logprobs=True"),
            (isinstance(self.skip_special_tokens, bool), "skip_special_tokens must be a bool"),
            (self.cache_salt is None or isinstance(self.cache_salt, str), "cache_salt must be None or a string"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def sampling(self) -> SamplingConfig:
        """The generation package's view of these settings (validated there)."""
        return SamplingConfig(max_new_tokens=self.max_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, min_p=self.min_p, repetition_penalty=self.repetition_penalty,
                              seed=self.seed, stop=self.stop, eos_token_ids=self.eos_token_ids,
                              ignore_eos=self.ignore_eos)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalised(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1

    def replace(self, **changes) -> "RequestParams":
        return dataclasses.replace(self, **changes)


class TokenLogprob(NamedTuple):
    """One generated token's log-probability under the model (before any sampling processor, as
    OpenAI and vLLM report it) and the top alternatives at its position, most likely first."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class StepOutput:
    """What one step did for one request."""

    request_id: str
    new_token_ids: list[int]  # sampled this step (an EOS or stop token is not included)
    text_delta: str  # new text; text that may still turn out to be a stop string is held back
    logprobs: list[TokenLogprob] | None  # one per new token, if the request asked
    finished: bool
    finish_reason: str | None  # OpenAI's: "stop" (EOS, stop token or stop string), "length", "error"
    stop_reason: str | int | None  # the stop string or token id that ended it, None otherwise
    prompt_tokens: int
    cached_tokens: int  # prompt tokens served from the prefix cache (not computed)
    completion_tokens: int  # tokens sampled so far, the final EOS or stop token included
    first_scheduled: float | None  # time.monotonic() when the request was first scheduled
    error: str | None = None  # with finish_reason "error": what went wrong


@dataclass
class RequestOutput:
    """A finished request, as `Engine.generate` returns it."""

    request_id: str
    prompt_ids: list[int]
    token_ids: list[int]  # generated ids; no EOS; cut before a stop string
    text: str  # the decoded output, cut exactly at a stop string ('' without a tokenizer)
    finish_reason: str  # "stop", "length" or "error"
    stop_reason: str | int | None
    logprobs: list[TokenLogprob] | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


@dataclass(eq=False)
class Request:
    """The engine's record of one sequence. `tokens` = prompt + generated; the first
    `num_computed` of them have their KV (and Mamba state) in the cache."""

    request_id: str
    prompt_len: int
    params: RequestParams
    tokens: list[int]
    arrival: float
    snapshot_at: tuple[int, ...] = ()  # prompt positions where a hybrid keeps a Mamba snapshot
    eos: frozenset[int] = frozenset()
    status: str = WAITING
    num_computed: int = 0
    blocks: list[int] = field(default_factory=list)
    n_registered: int = 0  # leading blocks already offered to the prefix cache
    block_keys: list[bytes] = field(default_factory=list)  # prefix-cache keys of full blocks of `tokens`
    state_slot: int | None = None  # Mamba state slot while running (hybrids)
    cached_tokens: int | None = None  # set at the first admission
    first_scheduled: float | None = None
    sampling: SamplingConfig | None = None  # params.sampling(), built once
    generator: torch.Generator | None = None
    counts: torch.Tensor | None = None  # (V,) occurrences of each token among the generated ones (penalties)
    seen: torch.Tensor | None = None  # (V,) bool: in prompt or output (repetition penalty)
    text: object = None  # detokenizer.TextTracker, when the engine has a tokenizer
    logprobs: list[TokenLogprob] | None = None
    completion_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    error: str | None = None
    preemptions: int = 0
    snapshot_points: list[int] = field(default_factory=list)  # hybrids: lengths where prefill stops for a snapshot

    @property
    def n_output(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    @property
    def finished(self) -> bool:
        return self.status == FINISHED
