"""Stage 2, quality filters: heuristic rules from Gopher (Rae et al. 2021, appendix A) and C4 (Raffel
et al. 2020), with thresholds loosened where source code, which this toolkit also trains on, fails
the prose-only originals. Each rule has a name; a rejected document is counted under the first rule
it fails, in the order below.

rule (reason)         measures                                                   default      Gopher / C4
too_short, too_long   whitespace-separated words                                 20..100k     50..100k
word_length           mean word length in characters                             2..15        3..10
symbol_ratio          share of non-space characters neither letter nor digit     <= 0.5       ('#', '...') / words <= 0.1
alpha_words           share of words holding at least one letter                 >= 0.6       >= 0.8
dup_lines             share of non-blank lines repeating an earlier line         <= 0.4       <= 0.3
dup_line_chars        share of non-blank line characters in such lines           <= 0.3       <= 0.2
top_{n}gram           chars of the most frequent word n-gram x its count / all   n=2,3,4: 0.20, 0.18, 0.16 (same)
                      word chars
dup_{n}gram           share of word chars covered by n-grams seen twice or more  n=5,7,10: 0.35, 0.30, 0.25
                                                                                 (Gopher n=5..10: 0.15..0.10)
banned_phrase         contains one of the phrases (case-insensitive)             "lorem ipsum" (C4)

On the default corpus these defaults keep 93% of the standard library's modules and 96% of the pydoc
topics; Gopher's own values (with its 50-word minimum) keep 48% and 79% (code repeats `self.`,
`return None`, closing brackets, and has many words without letters: `=`, `+=`, `0,`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .documents import DataError, Document, StageReport, progress
from .ngrams import WordHasher, ngram_hashes


@dataclass(frozen=True)
class FilterConfig:
    min_words: int = 20  # fewer whitespace-separated words: too_short
    max_words: int = 100_000  # more: too_long
    min_mean_word_len: float = 2.0  # characters; below: word_length
    max_mean_word_len: float = 15.0  # characters; above: word_length
    max_symbol_ratio: float = 0.5  # non-alphanumeric share of non-space characters
    min_alpha_words: float = 0.6  # share of words with at least one letter
    max_dup_lines: float = 0.4  # share of non-blank lines repeating an earlier line
    max_dup_line_chars: float = 0.3  # share of non-blank line characters in repeated lines
    max_top_ngram: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))  # (n, max share)
    max_dup_ngram: tuple[tuple[int, float], ...] = ((5, 0.35), (7, 0.30), (10, 0.25))  # (n, max share)
    banned_phrases: tuple[str, ...] = ("lorem ipsum",)  # lower case

    def __post_init__(self):
        if self.min_words < 0 or self.max_words < self.min_words:
            raise DataError(f"filters: need 0 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        for name in ("max_symbol_ratio", "min_alpha_words", "max_dup_lines", "max_dup_line_chars"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DataError(f"filters: {name} must be in [0, 1], got {getattr(self, name)}")

    @classmethod
    def from_overrides(cls, text: str) -> "FilterConfig":
        """`min_words=10,max_symbol_ratio=0.4` -> a config with those fields changed (scalar fields only)."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.type in ("int", "float")}
        changes = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key.strip() not in fields:
                raise DataError(f"--filter: {item!r} is not NAME=VALUE with NAME one of {', '.join(fields)}")
            kind = int if fields[key.strip()].type == "int" else float
            try:
                changes[key.strip()] = kind(value)
            except ValueError:
                raise DataError(f"--filter: {key.strip()} needs a number, got {value!r}") from None
        return dataclasses.replace(cls(), **changes)


def _line_repetition(text: str) -> tuple[float, float]:
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    if not lines:
        return 0.0, 0.0
    counts = Counter(lines)
    dup_lines = sum(c - 1 for c in counts.values())
    dup_chars = sum((c - 1) * len(line) for line, c in counts.items())
    return dup_lines / len(lines), dup_chars / sum(map(len, lines))


def _top_ngram_share(hashes: np.ndarray, lengths: np.ndarray, n: int, total: int) -> float:
    grams = ngram_hashes(hashes, n)
    if grams.size < 2:
        return 0.0
    values, first, counts = np.unique(grams, return_index=True, return_counts=True)
    best = int(np.argmax(counts))
    if counts[best] < 2:
        return 0.0
    start = int(first[best])
    return min(1.0, float(counts[best] * lengths[start:start + n].sum()) / total)


def _dup_ngram_share(hashes: np.ndarray, lengths: np.ndarray, n: int, total: int) -> float:
    grams = ngram_hashes(hashes, n)
    if grams.size < 2:
        return 0.0
    _, inverse, counts = np.unique(grams, return_inverse=True, return_counts=True)
    repeated = (counts[inverse] > 1).astype(np.int32)  # (W - n + 1,) an n-gram seen twice starts here
    # a word is covered when a repeated n-gram starts within the n positions up to it
    covered = np.convolve(repeated, np.ones(n, dtype=np.int32))[:lengths.size] > 0
    return float(lengths[covered].sum()) / total


def rejection(text: str, config: FilterConfig, hasher: WordHasher | None = None) -> str | None:
    """The name of the first rule `text` fails (see the module's table), or None when it passes."""
    words = text.split()
    if len(words) < config.min_words:
        return "too_short"
    if len(words) > config.max_words:
        return "too_long"
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    total = int(lengths.sum())
    if not config.min_mean_word_len <= total / len(words) <= config.max_mean_word_len:
        return "word_length"
    # every non-space character belongs to a word, so `total` counts them
    alnum = sum(map(str.isalnum, text))
    if total and (total - alnum) / total > config.max_symbol_ratio:
        return "symbol_ratio"
    # most words are letters only: isalpha() answers them in C before the per-character test
    if sum(1 for w in words if w.isalpha() or any(map(str.isalpha, w))) / len(words) < config.min_alpha_words:
        return "alpha_words"
    dup_lines, dup_line_chars = _line_repetition(text)
    if dup_lines > config.max_dup_lines:
        return "dup_lines"
    if dup_line_chars > config.max_dup_line_chars:
        return "dup_line_chars"
    hashes = (hasher or WordHasher())(words)
    for n, limit in config.max_top_ngram:
        if _top_ngram_share(hashes, lengths, n, total) > limit:
            return f"top_{n}gram"
    for n, limit in config.max_dup_ngram:
        if _dup_ngram_share(hashes, lengths, n, total) > limit:
            return f"dup_{n}gram"
    lowered = text.lower()
    for phrase in config.banned_phrases:
        if phrase in lowered:
            return "banned_phrase"
    return None


def quality_filter(docs: Iterable[Document], config: FilterConfig,
                   show_progress: bool = False) -> tuple[list[Document], StageReport]:
    """Keep the documents that pass every rule; count the others under the rule they failed."""
    report, hasher, kept = StageReport("filters"), WordHasher(), []
    docs = list(docs)
    for doc in progress(docs, "filters", show_progress, total=len(docs)):
        reason = rejection(doc.text, config, hasher)
        if reason is None:
            report.keep(doc)
            kept.append(doc)
        else:
            report.remove(doc.source, reason)
    return kept, report
