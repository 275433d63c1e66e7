"""Unstructured pruning: masks that zero the lowest-scoring weights; the model keeps its shape.

Scores come from importance.py (|W|, Wanda's |W| * ||X||, or Taylor |W * dL/dW|). Layer scope
removes `amount` of every linear's weights, global scope `amount` of all of them ranked together
(so some layers lose more than others). Exactly round(amount * n) weights go; among equal scores
the earlier index goes first, so the result does not depend on sort stability.

The masks are plain bool tensors (True = kept). They are applied by multiplying the weights, and a
`MaskGuard` keeps them applied while the weights train (recovery fine-tuning): it zeroes the
gradient of every pruned weight, so AdamW (whose moments start at zero, and whose decoupled decay
only shrinks a weight) never moves a pruned weight off zero.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import fraction_count


def keep_mask(scores: torch.Tensor, n_remove: int) -> torch.Tensor:
    """bool mask of scores' shape: False for the n_remove lowest scores (earlier index first on ties)."""
    flat = scores.detach().float().reshape(-1)
    if n_remove <= 0:
        return torch.ones_like(flat, dtype=torch.bool).view(scores.shape)
    threshold = flat.kthvalue(n_remove).values
    keep = flat > threshold
    ties = (flat == threshold).nonzero().reshape(-1)
    n_below = int((flat < threshold).sum())
    keep[ties[n_remove - n_below:]] = True  # of the tied, only as many as still needed go
    return keep.view(scores.shape)


def magnitude_masks(scores: dict[str, torch.Tensor], amount: float, scope: str) -> dict[str, torch.Tensor]:
    """Masks removing `amount` of the weights by score: of each tensor ("layer") or of all ("global")."""
    if scope == "layer":
        return {name: keep_mask(s, fraction_count(amount, s.numel())) for name, s in scores.items()}
    names = list(scores)
    flat = torch.cat([scores[n].detach().float().reshape(-1) for n in names])
    keep = keep_mask(flat, fraction_count(amount, flat.numel()))
    masks, start = {}, 0
    for n in names:
        size = scores[n].numel()
        masks[n] = keep[start:start + size].view(scores[n].shape)
        start += size
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every masked weight in place: the weight of linear `name` times masks[name]."""
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight
        weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))


def sparsity(model: nn.Module, names: list[str]) -> float:
    """Fraction of exactly-zero weights over the given linears."""
    zeros = total = 0
    for name in names:
        w = model.get_submodule(name).weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)


class MaskGuard:
    """While active, the gradient of every pruned weight is zero (see the module doc). Use as a
    context manager around training; on exit the masks are applied once more and the hooks removed."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        self.model, self.masks, self.handles = model, masks, []

    def __enter__(self) -> "MaskGuard":
        apply_masks(self.model, self.masks)
        for name, mask in self.masks.items():
            weight = self.model.get_submodule(name).weight
            m = mask.to(device=weight.device, dtype=weight.dtype)
            self.handles.append(weight.register_hook(lambda grad, m=m: grad * m))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        apply_masks(self.model, self.masks)
