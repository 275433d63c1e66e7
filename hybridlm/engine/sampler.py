"""Choosing the next token of every sequence in a step, each with its own settings and RNG.

Greedy rows without penalties share one argmax over the batch. Every other row goes through the
generation package's processors (`process_logits`) and `torch.multinomial` with its own seeded
generator, exactly as `generate` samples, so a request's tokens do not depend on which others
share its batch. Log-probabilities are taken from the raw logits, before any processor (what
OpenAI and vLLM report).
"""

from __future__ import annotations

import torch

from ..generation.processors import apply_presence_frequency_penalty
from ..generation.sampling import process_logits
from .request import Request, TokenLogprob


def _penalised(req: Request, logits: torch.Tensor) -> torch.Tensor:
    """One row (1, V) with the request's presence/frequency penalties (repetition: process_logits)."""
    p = req.params
    if (p.presence_penalty or p.frequency_penalty) and req.counts is not None:
        logits = apply_presence_frequency_penalty(logits, req.counts[None], p.presence_penalty, p.frequency_penalty)
    return logits


def _ensure_state(req: Request, vocab: int, device) -> None:
    """Penalty bookkeeping, made the first time the request samples (rebuilt from its tokens, so
    a preempted and recomputed request keeps it exact)."""
    p = req.params
    if not p.penalised or req.counts is not None:
        return
    req.counts = torch.zeros(vocab, dtype=torch.int32, device=device)
    out = req.output_ids
    if out:
        req.counts.index_add_(0, torch.tensor(out, device=device), torch.ones(len(out), dtype=torch.int32, device=device))
    if p.repetition_penalty != 1.0:
        req.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        req.seen[torch.tensor(req.tokens, device=device)] = True


def sample(requests: list[Request], logits: torch.Tensor) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits (K, V) float32, row i for requests[i] -> (token ids, logprob entries or None).

    Updates each request's penalty counts with its chosen token. Raises nothing for one bad row:
    a row whose logits are not finite gets token -1 (the caller fails that request alone).
    """
    k, vocab = logits.shape
    chosen = [0] * k
    plain = [i for i, r in enumerate(requests) if r.params.greedy and not r.params.penalised]
    if plain:
        rows = torch.tensor(plain, device=logits.device)
        for i, t in zip(plain, logits.index_select(0, rows).argmax(dim=-1).tolist()):
            chosen[i] = t
    for i, req in enumerate(requests):
        if req.params.greedy and not req.params.penalised:
            continue
        _ensure_state(req, vocab, logits.device)
        row = _penalised(req, logits[i:i + 1])
        sampling = req.sampling
        row = process_logits(row, sampling, None if req.seen is None else req.seen[None])
        if sampling.greedy:
            chosen[i] = int(row.argmax(dim=-1))
            continue
        probs = row.softmax(dim=-1)
        if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
            chosen[i] = -1
            continue
        chosen[i] = int(torch.multinomial(probs, 1, generator=req.generator))
    entries = _logprobs(requests, logits, chosen)
    for req, token in zip(requests, chosen):
        if token >= 0 and req.counts is not None:
            req.counts[token] += 1
            if req.seen is not None:
                req.seen[token] = True
    return chosen, entries


def _logprobs(requests: list[Request], logits: torch.Tensor, chosen: list[int]) -> list[TokenLogprob | None]:
    want = [i for i, r in enumerate(requests) if r.params.logprobs and chosen[i] >= 0]
    entries: list[TokenLogprob | None] = [None] * len(requests)
    if not want:
        return entries
    rows = torch.tensor(want, device=logits.device)
    logp = logits.index_select(0, rows).log_softmax(dim=-1)  # (W, V)
    picked = logp.gather(1, torch.tensor([[chosen[i]] for i in want], device=logits.device))[:, 0].tolist()
    n_top = max(requests[i].params.top_logprobs for i in want)
    top_v = top_i = None
    if n_top:
        top_v, top_i = logp.topk(n_top, dim=-1)
        top_v, top_i = top_v.tolist(), top_i.tolist()
    for j, i in enumerate(want):
        n = requests[i].params.top_logprobs
        top = list(zip(top_i[j][:n], top_v[j][:n])) if n else []
        entries[i] = TokenLogprob(chosen[i], picked[j], top)
    return entries
