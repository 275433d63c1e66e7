"""Which task items share long word n-grams with a training corpus.

The data pipeline's decontamination (data/decontam.py) is the one implementation: the same word
normalisation, the same n-gram hashes, the same `EvalNgrams` membership index. Here the index is
built over the training corpus (any inputs `hybridlm data prepare` reads: text, HTML, JSONL,
parquet, folders) and each task item is looked up in it, the reverse of the pipeline's direction.
Every string field of a task line counts (question, choices, answer), as in the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data.decontam import EvalNgrams
from ..data.ngrams import normalized_words
from ..data.sources import ReadOptions, read_paths


@dataclass
class ContaminationReport:
    n: int  # words per n-gram
    items: int  # task items read
    contaminated: list[dict] = field(default_factory=list)  # {"line", "shared_ngrams", "text"} per flagged item
    too_short: int = 0  # items with fewer than n words: they cannot match
    train_ngrams: int = 0  # distinct n-grams in the training corpus

    @property
    def fraction(self) -> float:
        return len(self.contaminated) / self.items if self.items else 0.0

    def as_dict(self) -> dict:
        return {"n": self.n, "items": self.items, "contaminated_items": len(self.contaminated),
                "contaminated_fraction": self.fraction, "too_short": self.too_short,
                "train_ngrams": self.train_ngrams, "contaminated": self.contaminated}


def contamination(train: str | Path, task: str | Path, n: int = 13, min_shared: int = 1,
                  show_progress: bool = False) -> ContaminationReport:
    """Task items (lines of a JSONL task file, or documents of other inputs) sharing at least
    `min_shared` distinct word n-grams with the corpus under `train`."""
    train, task = Path(train), Path(task)
    for p, what in ((train, "training corpus"), (task, "task file")):
        if not p.exists():
            raise FileNotFoundError(f"{what} {p} does not exist")
    if n < 1 or min_shared < 1:
        raise ValueError(f"contamination needs n >= 1 and min_shared >= 1, got {n}, {min_shared}")
    index = EvalNgrams.from_files([str(train)], n)
    report = ContaminationReport(n=n, items=0, train_ngrams=int(index.hashes.size))
    for raw in read_paths([task], "task", ReadOptions(text_field=None)):
        if raw.payload is None:
            raise ValueError(f"{raw.origin}: unreadable task item ({raw.problem})")
        text = raw.payload.decode("utf-8", "replace") if isinstance(raw.payload, bytes) else raw.payload
        report.items += 1
        shared = index.shared(text) if index.hashes.size else 0
        if len(normalized_words(text)) < n:
            report.too_short += 1
        if shared >= min_shared:
            line = raw.origin.rsplit(":", 1)[-1]
            report.contaminated.append({"line": int(line) if line.isdigit() else raw.origin,
                                        "shared_ngrams": shared, "text": text[:200]})
    return report
