"""The train/validation split: by whole document, per source (so validation has every source), seeded."""

from __future__ import annotations

import zlib

import numpy as np

from .documents import DataError, Document, StageReport


def split_documents(docs: list[Document], val_fraction: float, seed: int = 0,
                    ) -> tuple[list[Document], list[Document], StageReport]:
    """(train, val, report). Each source gives round(val_fraction * its documents) to validation, at
    least one when val_fraction > 0 and it has two or more; input order is kept within each side."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    report = StageReport("split")
    is_val = np.zeros(len(docs), dtype=bool)
    for source in dict.fromkeys(d.source for d in docs):
        members = np.array([i for i, d in enumerate(docs) if d.source == source])
        n_val = round(val_fraction * len(members))
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        # the source's name in the seed: adding a source does not reshuffle the others
        rng = np.random.default_rng([seed, zlib.crc32(source.encode())])
        is_val[rng.choice(members, size=n_val, replace=False)] = True
    train = [d for d, v in zip(docs, is_val) if not v]
    val = [d for d, v in zip(docs, is_val) if v]
    for doc in docs:
        report.keep(doc)
    report.info = {"val_fraction": val_fraction, "train": len(train), "val": len(val),
                   "val_by_source": {s: sum(d.source == s for d in val) for s in sorted({d.source for d in docs})}}
    return train, val, report
