"""`EngineConfig`: the serving engine's memory budgets, batch limits and policies."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

SCHEDULING = ("continuous", "static")
ATTENTION_IMPLS = ("auto", "native", "triton", "gather", "ref")


class ConfigError(ValueError):
    """An engine setting out of range."""


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 16  # tokens per KV block (the unit of allocation and of prefix caching)
    kv_memory: int = 1 << 30  # bytes for the KV block pools of all attention layers together
    mamba_state_memory: int = 64 << 20  # bytes for hybrid Mamba state snapshots (prefix caching), beyond
    # the one state slot per running sequence
    max_num_seqs: int = 64  # most sequences running at once (also the number of Mamba state slots)
    max_num_batched_tokens: int = 512  # token budget of one step: decode tokens plus prefill chunks
    long_prefill: int = 256  # most prompt tokens one sequence may prefill in one step (chunked prefill)
    enable_prefix_caching: bool = True  # reuse KV blocks (and Mamba snapshots) of identical prefixes
    scheduling: str = "continuous"  # "continuous" (vLLM v1) or "static" (a batch waits for its longest member)
    max_queue: int = 1024  # waiting requests beyond which add_request raises QueueFullError
    attention: str = "auto"  # paged attention: "native" (C++ op), "triton" (CUDA kernel, split-K), "gather"
    # (per-sequence SDPA over a gathered copy), "ref" (explicit softmax); "auto" = native on CPU,
    # triton on CUDA with the [triton] extra, gather elsewhere
    snapshot_interval: int = 0  # hybrids: also snapshot the Mamba state every this many blocks of a
    # prompt (0 = only at the caller's positions, shared-prefix junctions and turn ends)
    speculative: str | None = None  # speculative decoding: "prompt-lookup[:MAX_NGRAM]"; None = off (speculative.py)
    num_speculative_tokens: int = 4  # most draft tokens a sequence verifies per step

    def __post_init__(self) -> None:
        checks = [
            (_is_int(self.block_size) and self.block_size > 0, f"block_size must be a positive int, got {self.block_size!r}"),
            (_is_int(self.kv_memory) and self.kv_memory > 0, f"kv_memory must be a positive number of bytes, got {self.kv_memory!r}"),
            (_is_int(self.mamba_state_memory) and self.mamba_state_memory >= 0,
             f"mamba_state_memory must be bytes >= 0, got {self.mamba_state_memory!r}"),
            (_is_int(self.max_num_seqs) and self.max_num_seqs > 0, f"max_num_seqs must be a positive int, got {self.max_num_seqs!r}"),
            (_is_int(self.max_num_batched_tokens) and self.max_num_batched_tokens > 0,
             f"max_num_batched_tokens must be a positive int, got {self.max_num_batched_tokens!r}"),
            (_is_int(self.long_prefill) and self.long_prefill > 0, f"long_prefill must be a positive int, got {self.long_prefill!r}"),
            (isinstance(self.enable_prefix_caching, bool), "enable_prefix_caching must be a bool"),
            (self.scheduling in SCHEDULING, f"scheduling must be one of {SCHEDULING}, not {self.scheduling!r}"),
            (_is_int(self.max_queue) and self.max_queue >= 0, f"max_queue must be an int >= 0, got {self.max_queue!r}"),
            (self.attention in ATTENTION_IMPLS, f"attention must be one of {ATTENTION_IMPLS}, not {self.attention!r}"),
            (_is_int(self.snapshot_interval) and self.snapshot_interval >= 0,
             f"snapshot_interval must be an int >= 0 (blocks), got {self.snapshot_interval!r}"),
            (self.speculative is None or (isinstance(self.speculative, str)
                                          and self.speculative.partition(":")[0] == "prompt-lookup"),
             f"speculative must be None or 'prompt-lookup[:MAX_NGRAM]' (the engine has no draft models), "
             f"got {self.speculative!r}"),
            (_is_int(self.num_speculative_tokens) and self.num_speculative_tokens >= 1,
             f"num_speculative_tokens must be an int >= 1, got {self.num_speculative_tokens!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.max_num_batched_tokens < self.max_num_seqs:
            # every running sequence needs one decode token a step, or some would starve
            raise ConfigError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least "
                              f"max_num_seqs ({self.max_num_seqs})")

    def replace(self, **changes) -> "EngineConfig":
        return dataclasses.replace(self, **changes)
