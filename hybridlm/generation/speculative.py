"""Speculative decoding: a cheap proposer guesses k tokens, the target checks them in one forward.

Each round, for every row: the proposer (proposers.py) offers up to k tokens after the context;
the target runs its last token and the k proposals as one forward of k + 1 tokens over its cache;
`acceptance.verify` keeps a prefix of them by the rejection-sampling rule and picks one more token
from the target, so every round yields 1 to k + 1 tokens, distributed exactly as plain sampling
from the target would give them (greedy: exactly the plain greedy tokens). The cache then forgets
the rejected tokens (`Cache.rollback`): KV slots drop them, Mamba slots return to the state they
kept after the last accepted token (`Cache.keep_states`).

"Exactly" assumes the target computes a forward of k + 1 tokens as it computes k + 1 one-token
forwards. Only attention does not, by float rounding, which int8 activations ("fast" quantized
layers) can grow into a different greedy token; so by default the verification attends each token
as its one-token step would (verify_attention.py), and at batch 1 the tokens are bit for bit those
of plain decoding, in any activation mode.

On a memory-bound device (a CPU at batch 1, a GPU at small batch) a forward of k + 1 tokens costs
little more than one, since both stream every weight once: accepted tokens are nearly free.

Rows of a batch verify together; a row with fewer proposals pads its forward with masked tokens,
and rows that accept fewer tokens than others leave masked holes in the shared cache slots.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .acceptance import verify
from .generate import GenerationResult, GenerationStats, _accept, _check, _result, _Row, eos_ids, left_pad
from .processors import seen_mask
from .proposers import Proposal, Proposer
from .sampling import SamplingConfig, make_generator, next_tokens
from .stopping import Decode, StopWatcher
from .verify_attention import VERIFY_ATTENTION, decode_attention


@dataclass
class SpeculativeStats(GenerationStats):
    proposed: int = 0  # draft tokens the target verified, over all rows
    accepted: int = 0  # of those, the ones it kept
    steps: int = 0  # verification forwards of the target
    row_steps: int = 0  # (row, verification) pairs for rows still generating

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def accepted_per_step(self) -> float:
        """Draft tokens accepted per row per verification forward."""
        return self.accepted / self.row_steps if self.row_steps else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens a row gains per verification forward: the accepted ones plus the target's own."""
        return self.accepted_per_step + 1 if self.row_steps else 0.0

    def as_dict(self) -> dict:
        return {**super().as_dict(), "acceptance_rate": self.acceptance_rate,
                "accepted_per_step": self.accepted_per_step, "tokens_per_step": self.tokens_per_step}


def _cache_len(longest: int, sampling: SamplingConfig, batch: int, k: int) -> int:
    """Slots a static cache needs. At batch 1 a rollback frees its slots; at batch > 1 a row that
    accepts fewer tokens than another leaves holes, up to k per round and one round per token."""
    if batch == 1:
        return longest + sampling.max_new_tokens
    return longest + sampling.max_new_tokens * (k + 1)


def speculative_generate(target: nn.Module, proposer: Proposer, prompts: list[list[int]], sampling: SamplingConfig,
                         *, k: int = 4, cache_kind: str = "dynamic", decode: Decode | None = None,
                         on_token: Callable[[int, int], None] | None = None, kv_dtype: str = "float",
                         verify_attention: str = "decode") -> GenerationResult:
    """`generate` with speculative decoding: same arguments and result, the same tokens for greedy
    decoding and the same distribution for sampling, plus acceptance figures in `SpeculativeStats`.

    proposer: a `PromptLookupProposer` or a `DraftModelProposer` (proposers.py).
    k: most tokens proposed per round (>= 1). The target's cache is built with window_only=False:
        a sliding-window ring cannot roll back.
    kv_dtype: "float" or "int8" K/V storage, as in `generate`.
    verify_attention: "decode" attends each verified token as a one-token step would (exactly plain
        decoding's arithmetic at batch 1; k + 1 attention calls a layer), "batched" in one call
        (faster; equal up to float rounding, which int8 activations can grow into another token).
    The target and the proposer's model are not modified. Runs under torch.inference_mode.
    """
    _check(target, prompts, sampling, decode)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (tokens proposed per round) must be an int >= 1, got {k!r}")
    if verify_attention not in VERIFY_ATTENTION:
        raise ValueError(f"verify_attention must be one of {VERIFY_ATTENTION}, not {verify_attention!r}")
    vocab = getattr(proposer, "vocab_size", None)  # a draft model's; prompt lookup has none
    if vocab is not None and vocab != target.config.vocab_size:
        raise ValueError(f"the draft's vocabulary ({vocab} tokens) is not the target's ({target.config.vocab_size}): "
                         "a draft must share the target's tokenizer")
    eos = frozenset() if sampling.ignore_eos else eos_ids(target, sampling.eos_token_ids)
    device, batch, longest = target.device, len(prompts), max(len(p) for p in prompts)
    rows = [_Row() for _ in prompts]
    histories = [list(p) for p in prompts]  # prompt + every token each row received (EOS too)
    watcher = StopWatcher(sampling.stop, decode) if sampling.stop else None
    generator = None if sampling.greedy else make_generator(sampling.seed, device)
    stats = SpeculativeStats(prompt_tokens=sum(len(p) for p in prompts), new_tokens=0, prefill_s=0.0,
                             decode_s=0.0, cache_bytes=0, batch_size=batch)
    start = time.perf_counter()
    with torch.inference_mode():
        kv = {} if kv_dtype == "float" else {"kv_dtype": kv_dtype}
        cache = target.new_cache(batch, kind=cache_kind, max_len=_cache_len(longest, sampling, batch, k),
                                 window_only=False, **kv)
        seen = seen_mask(prompts, target.config.vocab_size, device) if sampling.repetition_penalty != 1.0 else None
        input_ids, attention_mask = left_pad(prompts, device)
        logits = target(input_ids, cache, attention_mask=attention_mask, last_only=True)[:, -1]
        first = next_tokens(logits.float(), sampling, generator, seen)
        _receive(rows, histories, stats, [[t] for t in first.tolist()], eos, watcher, on_token)
        if seen is not None:
            seen.scatter_(1, first[:, None], True)
        first_done = time.perf_counter()
        cache.keep_states()  # after the prompt: only the short verification forwards keep Mamba states
        if verify_attention == "decode":  # every forward from here on is a verification
            cache.attend_for = functools.partial(decode_attention, target.config)
        proposer.reset(batch)
        while True:
            remaining = [0 if row.finish else sampling.max_new_tokens - (len(h) - len(p))
                         for row, h, p in zip(rows, histories, prompts)]
            if max(remaining) <= 0:
                break
            # a round yields up to limit + 1 tokens, which must fit the row's budget
            limits = [max(0, min(k, r - 1)) for r in remaining]
            proposal = proposer.propose(histories, limits, sampling, generator) if max(limits) else \
                Proposal([[] for _ in rows], None)
            _round(target, cache, proposal, limits, remaining, rows, histories, stats, sampling, generator,
                   seen, eos, watcher, on_token)
        end = time.perf_counter()
    stats.prefill_s, stats.decode_s, stats.cache_bytes = first_done - start, end - first_done, cache.nbytes()
    return _result(rows, decode, stats)


def _round(target, cache, proposal: Proposal, limits, remaining, rows, histories, stats, sampling, generator,
           seen, eos, watcher, on_token) -> None:
    """One verification: the target runs each row's last token and its proposals, keeps what
    `verify` accepts, and rolls its cache back past the rest."""
    lengths = [len(t) for t in proposal.tokens]
    if any(n > limit for n, limit in zip(lengths, limits)):
        raise RuntimeError(f"the proposer returned {lengths} tokens for limits {limits}")
    n = max(lengths)
    live = [r > 0 for r in remaining]
    ids, mask = [], []
    for h, toks, on in zip(histories, proposal.tokens, live):
        ids.append([h[-1]] + toks + [h[-1]] * (n - len(toks)))  # filler: masked, never accepted
        # finished rows ride along fully masked: their positions stay put
        mask.append([int(on)] * (1 + len(toks)) + [0] * (n - len(toks)))
    device = cache.device
    mask_t = None if all(all(m) for m in mask) else torch.tensor(mask, device=device)
    ids_t = torch.tensor(ids, device=device)
    logits = target(ids_t, cache, attention_mask=mask_t)  # (B, n + 1, V)
    draft = ids_t[:, 1:]
    probs = proposal.probs
    if probs is not None and probs.shape[1] < n:
        raise RuntimeError(f"the proposer's distributions cover {probs.shape[1]} tokens, not {n}")
    accepted, following = verify(logits, draft, torch.tensor(lengths), sampling,
                                 None if probs is None else probs[:, :n], generator, seen)
    accepted, following = accepted.tolist(), following.tolist()
    cache.rollback([n - a if on else n + 1 for a, on in zip(accepted, live)])
    received = [toks[:a] + [f] if on else [] for toks, a, f, on in zip(proposal.tokens, accepted, following, live)]
    _receive(rows, histories, stats, received, eos, watcher, on_token)
    if seen is not None:
        for row, toks in enumerate(received):
            if toks:
                seen[row, torch.tensor(toks, device=seen.device)] = True
    stats.steps += 1
    stats.row_steps += sum(live)
    stats.proposed += sum(n for n, on in zip(lengths, live) if on)
    stats.accepted += sum(a for a, on in zip(accepted, live) if on)


def _receive(rows: list[_Row], histories: list[list[int]], stats: SpeculativeStats, received: list[list[int]],
             eos, watcher, on_token) -> None:
    """Hand each row its new tokens in order, as `generate` does one at a time (EOS and stop
    strings end a row; what follows them in the same round is dropped)."""
    for i, tokens in enumerate(received):
        callback = None if on_token is None else (lambda _, t, i=i: on_token(i, t))
        for token in tokens:
            if rows[i].finish:
                break
            histories[i].append(token)
            stats.new_tokens += _accept([rows[i]], [token], eos, watcher, callback)
