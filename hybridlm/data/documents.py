"""What flows between the curation stages: documents, and each stage's account of what it kept and removed."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")


class DataError(ValueError):
    """Bad input to data preparation (a missing path, an unknown option value): one line a user can act on."""


@dataclass
class Document:
    text: str
    source: str  # the source's name; mix weights refer to it
    origin: str  # where it came from: a path, path:line for JSONL, path#row for parquet, pydoc:topic

    @property
    def chars(self) -> int:
        """Its size for mixing (store.DocRef carries the same number without the text)."""
        return len(self.text)


@dataclass
class StageReport:
    """How many documents a stage saw, kept and removed (by reason), overall and per source.

    Removal stages keep `kept + sum(removed) == docs_in`; `info` holds what is particular to a stage
    (encodings seen, LSH bands, achieved mix shares).
    """

    stage: str
    docs_in: int = 0
    kept: int = 0
    removed: Counter = field(default_factory=Counter)  # reason -> documents
    by_source: dict[str, Counter] = field(default_factory=dict)  # source -> {"in", "kept", "removed"}
    info: dict[str, Any] = field(default_factory=dict)

    def _source(self, source: str) -> Counter:
        return self.by_source.setdefault(source, Counter())

    def keep(self, doc: Document) -> None:
        self.docs_in += 1
        self.kept += 1
        counts = self._source(doc.source)
        counts["in"] += 1
        counts["kept"] += 1

    def remove(self, source: str, reason: str) -> None:
        self.docs_in += 1
        self.removed[reason] += 1
        counts = self._source(source)
        counts["in"] += 1
        counts["removed"] += 1

    def summary(self) -> str:
        """One line: `filters: kept 700 of 811 (removed 111: too_short 80, symbol_ratio 31)`."""
        line = f"{self.stage}: kept {self.kept:,} of {self.docs_in:,} documents"
        if self.removed:
            reasons = ", ".join(f"{reason} {n:,}" for reason, n in self.removed.most_common())
            line += f" (removed {sum(self.removed.values()):,}: {reasons})"
        return line

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "in": self.docs_in, "kept": self.kept, "removed": dict(self.removed),
                "by_source": {s: {k: c[k] for k in ("in", "kept", "removed")}
                              for s, c in sorted(self.by_source.items())},
                **({"info": self.info} if self.info else {})}


def merge_reports(reports: list[StageReport], stage: str) -> StageReport:
    """One report of `stage` from the reports of its partitions (counts add; extract's info too)."""
    out = StageReport(stage)
    encodings, replaced = Counter(), 0
    for r in reports:
        out.docs_in += r.docs_in
        out.kept += r.kept
        out.removed.update(r.removed)
        for source, counts in r.by_source.items():
            out._source(source).update(counts)
        encodings.update(r.info.get("encodings", {}))
        replaced += r.info.get("replacement_chars", 0)
    if stage == "extract":
        out.info = {"encodings": dict(encodings), "replacement_chars": replaced}
    return out


def progress(items: Iterable[T], stage: str, enabled: bool, total: int | None = None, unit: str = "doc") -> Iterator[T]:
    """A tqdm bar on stderr for one stage (nothing when not enabled)."""
    return iter(tqdm(items, desc=stage, total=total, unit=unit, file=sys.stderr, disable=not enabled,
                     leave=False, dynamic_ncols=True))


def log(message: str, enabled: bool) -> None:
    if enabled:
        tqdm.write(message, file=sys.stderr)
