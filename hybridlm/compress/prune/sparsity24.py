"""Semi-structured N:M sparsity (2:4 by default): in every run of M consecutive input weights of a
row, at most N are nonzero (Mishra et al. 2021, the pattern sparse tensor cores run at 2x). The N
highest-scoring weights of each run are kept; the model keeps its shape, as with magnitude masks.
"""

from __future__ import annotations

import torch

from .config import PruneError


def n_m_masks(scores: dict[str, torch.Tensor], n: int = 2, m: int = 4) -> dict[str, torch.Tensor]:
    """Per linear: bool mask (out, in) keeping the n best of every m consecutive inputs of a row."""
    masks = {}
    for name, s in scores.items():
        if s.shape[-1] % m:
            raise PruneError(f"{name} has {s.shape[-1]} inputs, not a multiple of {m}: no {n}:{m} pattern fits")
        runs = s.detach().float().reshape(s.shape[0], -1, m)  # (out, in / m, m)
        best = runs.topk(n, dim=-1).indices
        mask = torch.zeros_like(runs, dtype=torch.bool).scatter_(-1, best, True)
        masks[name] = mask.view(s.shape)
    return masks


def follows_n_m(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every run of m consecutive inputs of every row has at most n nonzero weights."""
    if weight.shape[-1] % m:
        return False
    return bool(((weight.reshape(weight.shape[0], -1, m) != 0).sum(-1) <= n).all())
