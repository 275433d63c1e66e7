"""Stage 4, controlled mixing: each source's share of the output, in characters (a stand-in for
tokens that needs no tokenizer), set by weights.

A source with more text than its share is sampled down (whole documents, seeded); one with less is
repeated: every document `floor(target / size)` times, then a seeded sample for the rest. The output
size is either "natural" (as many characters as the input) or "no-repeat" (the largest output in
which no document appears twice: the scarcest source, relative to its weight, is taken whole).
Mixing runs per split, after the train/validation split, so a repeated document never lands on
both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .documents import DataError, Document, StageReport

TOTALS = ("natural", "no-repeat")


@dataclass(frozen=True)
class MixConfig:
    weights: tuple[tuple[str, float], ...] = ()  # (source, weight >= 0); empty = sources as they come
    total: str = "natural"  # output size: "natural" (the input's) or "no-repeat"
    seed: int = 0  # picks the sampled documents and the output order

    def __post_init__(self):
        if self.total not in TOTALS:
            raise DataError(f"unknown mix total {self.total!r} (known: {', '.join(TOTALS)})")
        names = [name for name, _ in self.weights]
        if len(set(names)) != len(names):
            raise DataError(f"--mix names a source twice: {', '.join(names)}")
        if any(not math.isfinite(w) or w < 0 for _, w in self.weights):
            raise DataError("--mix weights must be finite numbers >= 0")
        if self.weights and sum(w for _, w in self.weights) <= 0:
            raise DataError("--mix weights must not all be zero")

    @classmethod
    def parse(cls, text: str | None, total: str = "natural", seed: int = 0) -> "MixConfig":
        """`prose=0.7,code=0.3` (weights need not add up to 1) -> MixConfig."""
        weights = []
        for item in filter(None, (part.strip() for part in (text or "").split(","))):
            name, sep, value = item.partition("=")
            try:
                weights.append((name.strip(), float(value)))
            except ValueError:
                sep = ""
            if not sep or not name.strip():
                raise DataError(f"--mix: {item!r} is not SOURCE=WEIGHT (e.g. prose=0.7,code=0.3)")
        return cls(tuple(weights), total, seed)

    def shares(self, sources: list[str]) -> dict[str, float]:
        """Each source's target share of the output characters (summing to 1)."""
        if not self.weights:
            return {}
        named = dict(self.weights)
        unknown = sorted(set(named) - set(sources))
        if unknown:
            raise DataError(f"--mix names unknown source {unknown[0]!r} (sources: {', '.join(sources)})")
        missing = [s for s in sources if s not in named]
        if missing:
            raise DataError(f"--mix gives no weight for source {missing[0]!r}; give every source one "
                            f"(0 drops it): {', '.join(sources)}")
        total = sum(named.values())
        return {s: named[s] / total for s in sources}


def _sample(docs: list[Document], sizes: np.ndarray, target: float, rng: np.random.Generator) -> list[int]:
    """Indices of a seeded sample of whole documents whose sizes add up as close to `target` as may be."""
    order = rng.permutation(len(docs))
    cumulative = np.cumsum(sizes[order])
    k = int(np.searchsorted(cumulative, target, side="right"))  # documents that fit under the target
    if k < len(order) and abs(cumulative[k] - target) < abs((cumulative[k - 1] if k else 0) - target):
        k += 1
    return sorted(order[:k].tolist())


def mix(docs: list[Document], config: MixConfig, sources: list[str], split: str = "train",
        report: StageReport | None = None, strict: bool = True) -> tuple[list[Document], dict[str, Any]]:
    """Documents in the proportions of config.weights, shuffled; and what was achieved per source.
    A weighted source without documents is an error when `strict`, else it is left out and the other
    weights scaled up (for a small validation split). Adds to `report`: unique documents kept, and
    those left out (reason: not_sampled)."""
    rng = np.random.default_rng([config.seed, sum(map(ord, split))])
    by_source = {s: [d for d in docs if d.source == s] for s in sources}
    sizes = {s: np.array([d.chars for d in ds], dtype=np.int64) for s, ds in by_source.items()}
    available = {s: int(sizes[s].sum()) for s in sources}
    if not sum(available.values()):
        raise DataError(f"no {split} documents left after curation (see the stage counts)")
    shares = config.shares(sources) or {s: available[s] / sum(available.values()) for s in sources}
    for s in sources:
        if shares[s] > 0 and available[s] == 0:
            if strict:
                raise DataError(f"source {s!r} has no {split} documents left after curation, so its mix "
                                f"weight cannot be met")
            shares = {k: (v if k != s else 0.0) for k, v in shares.items()}
    shares = {k: v / sum(shares.values()) for k, v in shares.items()}
    if config.total == "natural":
        total = sum(available.values())
    else:
        total = min(available[s] / shares[s] for s in sources if shares[s] > 0)
    out: list[Document] = []
    achieved: dict[str, Any] = {}
    for s in sources:
        target = shares[s] * total
        copies = math.floor(target / available[s] + 1e-9) if available[s] else 0
        picked = list(range(len(by_source[s]))) * copies
        extra = _sample(by_source[s], sizes[s], target - copies * available[s], rng) if available[s] else []
        picked += extra
        out += [by_source[s][i] for i in picked]
        chosen = set(picked)
        if report is not None:
            for i, doc in enumerate(by_source[s]):
                if i in chosen:
                    report.keep(doc)
                else:
                    report.remove(s, "not_sampled")
        achieved[s] = {"target_share": round(shares[s], 6), "documents": len(picked),
                       "unique_documents": len(chosen),
                       "chars": int(sum(sizes[s][i] for i in picked)), "epochs": round(target / available[s], 4)
                       if available[s] else 0.0}
    out_chars = sum(a["chars"] for a in achieved.values())
    for a in achieved.values():
        a["share"] = round(a["chars"] / out_chars, 6) if out_chars else 0.0
    return [out[i] for i in rng.permutation(len(out))], achieved
