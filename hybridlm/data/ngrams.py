"""Words and word n-grams as 64-bit hashes: shared by the filters, MinHash and decontamination.

A word hash is the first 8 bytes of its BLAKE2b digest: stable across runs and machines (Python's
`hash` is salted per process), so a dataset prepared twice comes out the same. An n-gram's hash is
a polynomial in its words' hashes, computed for every position at once with wrapping uint64
arithmetic; with random 64-bit word hashes two different n-grams collide with probability ~2^-64.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

_WORD = re.compile(r"\w+")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so multiplication by it is a bijection mod 2^64


def normalized_words(text: str) -> list[str]:
    """Lower-cased runs of letters, digits and underscores: words with punctuation and spacing ignored."""
    return _WORD.findall(text.lower())


class WordHasher:
    """word -> stable uint64 hash, cached (a corpus has far fewer distinct words than words)."""

    def __init__(self, max_cache: int = 2_000_000):
        self._cache: dict[str, int] = {}
        self._max_cache = max_cache

    def _hash(self, word: str) -> int:
        value = int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                               "little")
        if len(self._cache) >= self._max_cache:
            self._cache.clear()
        self._cache[word] = value
        return value

    def __call__(self, words: list[str]) -> np.ndarray:
        """(W,) uint64 hashes of `words`."""
        cache, miss = self._cache, self._hash
        return np.fromiter((cache[w] if w in cache else miss(w) for w in words), dtype=np.uint64, count=len(words))


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """(W - n + 1,) uint64 hashes of the n-grams starting at each position of (W,) uint64 word hashes;
    empty when there are fewer than n words."""
    count = word_hashes.size - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    out = word_hashes[:count].copy()
    for j in range(1, n):
        out *= _MULTIPLIER
        out += word_hashes[j:j + count]
    return out
