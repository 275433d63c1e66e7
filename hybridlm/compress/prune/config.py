"""`PruneConfig`: what to prune, how much, ranked by what; checked before any weight is touched."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..config import CompressError

METHODS = ("magnitude", "2:4", "channels", "heads", "layers")
SCOPES = ("layer", "global")
IMPORTANCES = ("weight", "activation", "gradient")
HEAD_UNITS = ("query", "group")
# what each method ranks by when not told: masks by |W| (no data needed), structures by what the
# calibration data says they contribute (Wanda-style |W| x ||X||; layers by ShortGPT's block influence)
DEFAULT_IMPORTANCE = {"magnitude": "weight", "2:4": "weight", "channels": "activation", "heads": "activation",
                      "layers": "activation"}


def fraction_count(amount: float, of: int) -> int:
    """How many of `of` things a fraction removes: rounded half up (Python's round() sends 0.5 of 1
    thing to 0), so --amount 0.5 of 1 means 1 and the smallest useful amount is 0.5 / of."""
    return math.floor(amount * of + 0.5)


class PruneError(CompressError):
    """A pruning request that cannot be carried out; the message is one line a user can act on."""


@dataclass
class PruneConfig:
    """How `prune_model` prunes. None fields take the method's default."""

    method: str  # one of METHODS
    amount: float | None = None  # fraction in (0, 1) of weights / channels / heads / layers to remove; 2:4 is 0.5
    scope: str = "layer"  # magnitude: rank each linear on its own ("layer") or all together ("global")
    importance: str | None = None  # one of IMPORTANCES; None: DEFAULT_IMPORTANCE[method]
    head_unit: str | None = None  # heads: "query" (query heads evenly per KV group) or "group" (whole
    #   KV groups with their query heads); None: group for MHA (a group is one head), else query
    recover_steps: int = 0  # optimizer steps of recovery fine-tuning with the trainer; 0 = none
    recover_lr: float = 1e-4  # peak learning rate of the recovery fine-tuning
    recover_batch: int = 4  # sequences per recovery step
    seed: int = 0  # recovery data order

    def replace(self, **changes) -> "PruneConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def needs_calibration(self) -> bool:
        return self.importance != "weight" or self.recover_steps > 0


def resolve_prune_config(cfg: PruneConfig) -> PruneConfig:
    """`cfg` with its defaults filled in, or PruneError naming the first thing wrong with it."""
    if cfg.method not in METHODS:
        raise PruneError(f"unknown pruning method {cfg.method!r}; known: {', '.join(METHODS)}")
    amount = cfg.amount
    if cfg.method == "2:4":
        if amount is not None and amount != 0.5:
            raise PruneError(f"2:4 sparsity removes exactly half the weights; drop --amount (got {amount})")
        amount = 0.5
    elif amount is None:
        raise PruneError(f"--amount is required for {cfg.method}: the fraction to remove, in (0, 1)")
    if not 0.0 < amount < 1.0:
        raise PruneError(f"--amount must be a fraction strictly between 0 and 1, not {amount}")
    if cfg.scope not in SCOPES:
        raise PruneError(f"--scope must be one of {', '.join(SCOPES)}, not {cfg.scope!r}")
    if cfg.scope == "global" and cfg.method != "magnitude":
        raise PruneError(f"--scope global applies to magnitude pruning; {cfg.method} keeps one shape for every layer")
    importance = cfg.importance or DEFAULT_IMPORTANCE[cfg.method]
    if importance not in IMPORTANCES:
        raise PruneError(f"--importance must be one of {', '.join(IMPORTANCES)}, not {importance!r}")
    if cfg.method == "layers" and importance == "weight":
        raise PruneError("layers are ranked by what they do to the hidden state: use --importance activation "
                         "(block influence, ShortGPT) or gradient")
    if cfg.head_unit is not None and cfg.head_unit not in HEAD_UNITS:
        raise PruneError(f"--head-unit must be one of {', '.join(HEAD_UNITS)}, not {cfg.head_unit!r}")
    if cfg.head_unit is not None and cfg.method != "heads":
        raise PruneError("--head-unit applies to --method heads")
    if cfg.recover_steps < 0 or cfg.recover_lr <= 0 or cfg.recover_batch < 1:
        raise PruneError("recovery needs steps >= 0, a positive learning rate and a batch of at least 1")
    return cfg.replace(amount=amount, importance=importance)
