"""Logit processors: small pure functions over one step's logits (B, V) float32.

Each returns a new tensor and leaves its input untouched. Filtered tokens get -inf, so a softmax
afterwards gives them probability 0. They follow the definitions transformers uses (and the tests
pin them to its `*LogitsWarper` / `RepetitionPenaltyLogitsProcessor` on random logits), applied in
its order: repetition penalty, temperature, top-k, top-p, min-p.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019) as transformers applies it: for every token already seen,
    divide a positive logit by `penalty` and multiply a negative one, so penalty > 1 always makes
    the token less likely. seen (B, V) bool: token appeared in the prompt or the output so far."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def apply_presence_frequency_penalty(logits: torch.Tensor, counts: torch.Tensor, presence: float,
                                     frequency: float) -> torch.Tensor:
    """OpenAI's penalties: logit - presence * [count > 0] - frequency * count, where counts (B, V)
    holds how often each token occurs among the tokens generated so far (not the prompt)."""
    counts = counts.to(logits.dtype)
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T): T < 1 sharpens the distribution, T > 1 flattens it. T > 0."""
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row (ties with the k-th are kept too); -inf elsewhere."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of most probable tokens whose
    probabilities sum to at least p. A token is kept when the mass of the tokens ranked above it is
    still below p, so the most probable token always survives."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs  # exclusive cumulative sum, (B, V)
    drop_sorted = mass_above >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, NEG_INF)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Min-p sampling (Nguyen et al. 2024): drop tokens whose probability is below min_p times the
    most probable token's. The top token always survives (min_p <= 1)."""
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)  # (B, 1)
    return logits.masked_fill(probs < threshold, NEG_INF)


def seen_mask(token_lists: list[list[int]], vocab_size: int, device=None) -> torch.Tensor:
    """(B, V) bool: True where token v occurs in row b's list (the repetition penalty's input)."""
    mask = torch.zeros(len(token_lists), vocab_size, dtype=torch.bool, device=device)
    for row, ids in enumerate(token_lists):
        if ids:
            mask[row, torch.tensor(ids, dtype=torch.long, device=device)] = True
    return mask
