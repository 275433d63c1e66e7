"""Log-likelihood of continuations given contexts: the scorer behind multiple choice and the lm-eval
adapter's `loglikelihood`.

A request is (context ids, continuation ids); its score is sum_j log p(cont_j | context, cont_<j)
and whether every continuation token is the greedy (argmax) one, as lm-eval reports it.

Fast path (`impl="cache"`): requests that share a context (the choices of one question) are scored
together: the context is prefilled ONCE into the model's cache (cache.py), the cache is copied to
one row per continuation (`Cache.reorder` with repeated rows), and all continuations go through one
right-padded forward. Padding sits after the real tokens, so causality keeps it out of every real
token's logits, in attention and Mamba layers alike. Reference (`impl="ref"`): one full forward
of context + continuation per request, no cache. Tests pin them together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

Request = tuple[Sequence[int], Sequence[int]]  # (context ids, continuation ids)


@dataclass
class Score:
    logprob: float  # sum of the continuation tokens' log-probabilities (nats)
    greedy: bool  # every continuation token is the argmax of its logits
    n_tokens: int  # continuation tokens scored


def _context_limit(model: nn.Module) -> int | None:
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    return limit if isinstance(limit, int) else None


def fit_request(model: nn.Module, context: Sequence[int], continuation: Sequence[int],
                truncate: bool) -> tuple[list[int], list[int]]:
    """Check a request against the model's context. truncate: drop the oldest context tokens so
    context + continuation - 1 tokens fit (what lm-eval's HF backend does); else a ValueError."""
    context, continuation = list(context), list(continuation)
    if not context or not continuation:
        raise ValueError("a log-likelihood request needs a non-empty context and continuation")
    limit = _context_limit(model)
    need = len(context) + len(continuation) - 1  # the last continuation token is never fed in
    if limit is not None and need > limit:
        if not truncate or len(continuation) > limit:
            raise ValueError(f"context + continuation ({need} tokens) is longer than the model's context ({limit})")
        context = context[need - limit:]
    return context, continuation


def _token_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, bool]:
    """logits (T, V) predicting targets (T,) -> (sum of log-probs, all greedy)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return float(logp.gather(1, targets[:, None]).sum()), bool((logits.argmax(-1) == targets).all())


@torch.inference_mode()
def score_ref(model: nn.Module, requests: Iterable[Request], truncate: bool = False) -> list[Score]:
    """One full forward per request: obviously right, slow."""
    out = []
    device = next(model.parameters()).device
    for context, continuation in requests:
        context, continuation = fit_request(model, context, continuation, truncate)
        ids = torch.tensor(context + continuation[:-1], device=device)[None]
        out_ = model(ids)
        logits = getattr(out_, "logits", out_)[0, len(context) - 1:]  # (len(continuation), V)
        lp, greedy = _token_scores(logits, torch.tensor(continuation, device=device))
        out.append(Score(lp, greedy, len(continuation)))
    return out


@torch.inference_mode()
def score_shared_context(model: nn.Module, context: Sequence[int], continuations: Sequence[Sequence[int]],
                         truncate: bool = False) -> list[Score]:
    """All continuations of one context: the context is prefilled once, then one batched forward."""
    fitted = [fit_request(model, context, c, truncate) for c in continuations]
    shortest = min(len(c) for c, _ in fitted)  # truncation may cut more for longer continuations
    context = list(context)[len(context) - shortest:]
    conts = [c for _, c in fitted]
    device, longest = model.device, max(len(c) for c in conts)
    cache = model.new_cache(1, kind="dynamic", max_len=len(context) + longest, window_only=False)
    first = model(torch.tensor([context], device=device), cache, last_only=True)[0, -1]  # (V,) predicts token 0
    first_logp = F.log_softmax(first.float(), dim=-1)
    rest = None
    if longest > 1:
        cache.reorder(torch.zeros(len(conts), dtype=torch.long, device=device))
        rows = [c[:-1] + [0] * (longest - len(c)) for c in conts]  # right padding: never seen by real tokens
        rest = model(torch.tensor(rows, device=device), cache)  # (n, longest - 1, V)
    out = []
    for i, (ctx_i, cont) in enumerate(fitted):
        if len(ctx_i) != len(context):  # this continuation needed a shorter context: score it alone
            out.extend(score_ref(model, [(ctx_i, cont)]))
            continue
        lp, greedy = float(first_logp[cont[0]]), int(first.argmax()) == cont[0]
        if len(cont) > 1:
            more_lp, more_greedy = _token_scores(rest[i, :len(cont) - 1], torch.tensor(cont[1:], device=device))
            lp, greedy = lp + more_lp, greedy and more_greedy
        out.append(Score(lp, greedy, len(cont)))
    return out


def score(model: nn.Module, requests: Sequence[Request], impl: str = "cache", truncate: bool = False,
          progress: Callable[[Iterable], Iterable] | None = None) -> list[Score]:
    """Scores in request order. impl "cache": requests grouped by context (each context prefilled
    once, see the module doc); "ref": `score_ref`. Models without a cache (e.g. transformers')
    need "ref"."""
    if impl == "ref":
        return score_ref(model, (progress or iter)(requests), truncate)
    if impl != "cache":
        raise ValueError(f"impl must be 'cache' or 'ref', not {impl!r}")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (context, _) in enumerate(requests):
        groups.setdefault(tuple(context), []).append(i)
    out: list[Score | None] = [None] * len(requests)
    for context, members in (progress or iter)(list(groups.items())):
        for i, s in zip(members, score_shared_context(model, context, [requests[i][1] for i in members], truncate)):
            out[i] = s
    return out
