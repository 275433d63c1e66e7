"""Verifying draft tokens against the target: the rule that makes speculative decoding exact.

Speculative sampling (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
Decoding", Algorithm 1; Chen et al. 2023, "Accelerating Large Language Model Decoding with
Speculative Sampling", Algorithm 2). The draft proposed d_1..d_n, d_i drawn from q_i; one target
forward gave p_0..p_n, where p_i is the target's next-token distribution after d_1..d_i:

    for i = 1..n: accept d_i with probability min(1, p_{i-1}(d_i) / q_i(d_i)); stop at the first rejection
    rejected at i:  the next token ~ norm(max(0, p_{i-1} - q_i))
    all accepted:   a bonus token ~ p_n

Each emitted token is then distributed exactly as p (the papers' Theorem 1 / Theorem 1). A
deterministic proposer (prompt lookup) is the point mass q_i = 1 at d_i: accept with probability
p(d_i), else resample from p with d_i removed. Greedy decoding needs no randomness: accept while
d_i is the target's argmax, then emit the argmax. p and q are shaped by the same processors
(temperature, top-k/p, min-p, repetition penalty) as plain sampling.
"""

from __future__ import annotations

import torch

from .sampling import SamplingConfig, process_logits


def seen_per_position(seen: torch.Tensor | None, draft: torch.Tensor) -> torch.Tensor | None:
    """The repetition penalty's mask at each verified position: seen (B, V) plus d_1..d_i at position i.
    draft (B, n) int64 -> (B, n + 1, V) bool, or None when there is no penalty."""
    if seen is None:
        return None
    n = draft.shape[1]
    steps = seen[:, None].repeat(1, n + 1, 1)
    for i in range(n):
        steps[:, i + 1:].scatter_(-1, draft[:, i, None, None].expand(-1, n - i, 1), True)
    return steps


def target_probs(logits: torch.Tensor, sampling: SamplingConfig, seen: torch.Tensor | None) -> torch.Tensor:
    """Processed target logits (B, n + 1, V) -> p as probabilities (sampling) or processed logits
    (greedy, where only the argmax matters)."""
    b, t, v = logits.shape
    flat_seen = None if seen is None else seen.reshape(b * t, v)
    processed = process_logits(logits.float().reshape(b * t, v), sampling, flat_seen).view(b, t, v)
    return processed if sampling.greedy else processed.softmax(-1)


def verify(logits: torch.Tensor, draft: torch.Tensor, lengths: torch.Tensor, sampling: SamplingConfig,
           draft_probs: torch.Tensor | None = None, generator: torch.Generator | None = None,
           seen: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept a prefix of each row's draft and choose the token after it.

    logits (B, n + 1, V): the target's logits at the last context token and at each draft token.
    draft (B, n) int64: proposed tokens; row b proposed only its first lengths[b] (B,) (the rest is filler).
    draft_probs (B, n, V) float: q, the distribution each draft token was drawn from; None = point
        masses (deterministic proposals). Ignored by greedy decoding.
    seen (B, V) bool: tokens before the draft (repetition penalty only).
    Returns (accepted (B,) int64 in [0, lengths[b]], next token (B,) int64). Draws from `generator`.
    """
    b, n = draft.shape
    device = logits.device
    lengths = lengths.to(device)
    p = target_probs(logits, sampling, seen_per_position(seen, draft))  # (B, n + 1, V)
    rows = torch.arange(b, device=device)
    in_draft = torch.arange(n, device=device) < lengths[:, None]  # (B, n)
    if sampling.greedy:
        best = p.argmax(-1)  # (B, n + 1)
        accepted = ((best[:, :n] == draft) & in_draft).long().cumprod(1).sum(1)
        return accepted, best[rows, accepted]
    if n:
        p_draft = p[:, :n].gather(-1, draft[..., None])[..., 0]  # (B, n)
        q_draft = torch.ones_like(p_draft) if draft_probs is None else \
            draft_probs.float().gather(-1, draft[..., None])[..., 0]
        u = torch.rand(b, n, generator=generator, device=device)
        # u < p/q, written without dividing by q; q > 0 wherever the draft really sampled
        ok = (u * q_draft < p_draft) & in_draft
        accepted = ok.long().cumprod(1).sum(1)
    else:
        accepted = torch.zeros(b, dtype=torch.long, device=device)
    dist = p[rows, accepted]  # (B, V): p after the accepted prefix
    rejected = accepted < lengths
    if bool(rejected.any()):
        at = accepted.clamp(max=n - 1)
        if draft_probs is None:
            q = torch.nn.functional.one_hot(draft[rows, at], p.shape[-1]).to(p.dtype)
        else:
            q = draft_probs.float()[rows, at]
        residual = (dist - q).clamp(min=0)
        mass = residual.sum(-1, keepdim=True)
        # mass 0 means p <= q everywhere, i.e. p == q up to rounding: then a rejection had
        # probability ~0 and p itself is the right distribution
        residual = torch.where(mass > 0, residual / mass.clamp(min=torch.finfo(mass.dtype).tiny), dist)
        dist = torch.where(rejected[:, None], residual, dist)
    return accepted, torch.multinomial(dist, 1, generator=generator)[:, 0]
