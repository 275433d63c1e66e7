"""MinHash signatures and locality-sensitive hashing (Broder 1997; Leskovec et al., Mining of Massive
Datasets, ch. 3), by hand in numpy.

A document is its set of word shingles (n consecutive normalized words). Each of K hash functions
h_k(x) = (a_k x + b_k) mod p, with p the largest prime below 2^32 and x a 32-bit shingle hash, acts
as a random permutation of the shingles; the signature keeps each function's minimum. For two sets,
P[min h_k(A) == min h_k(B)] = Jaccard(A, B), so the share of equal signature entries estimates it.

LSH cuts a signature into b bands of r rows (b * r = K): two documents become a candidate pair
when some band matches exactly, which happens with probability 1 - (1 - s^r)^b for Jaccard s, an
S-curve stepping up near (1/b)^(1/r). (b, r) are chosen to balance the false positive and false
negative areas around the threshold, as datasketch does; candidates are then kept only when their
estimated Jaccard reaches the threshold.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .documents import DataError
from .ngrams import WordHasher, ngram_hashes, normalized_words

PRIME = np.uint64(4294967291)  # largest prime below 2^32: a*x + b < 2^64 for a, x, b < 2^32, so uint64 is exact
_CHUNK = 8192  # shingles hashed at once: bounds the (chunk, K) temporary
_ALL_PAIRS = 64  # buckets up to this size yield every pair


@dataclass(frozen=True)
class MinHashConfig:
    threshold: float = 0.8  # Jaccard similarity of shingle sets at which two documents are near duplicates
    num_perm: int = 128  # hash functions, the signature length K
    shingle: int = 5  # words per shingle
    seed: int = 0  # picks the hash functions

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise DataError(f"the near-duplicate Jaccard threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 2 or self.shingle < 1:
            raise DataError(f"MinHash needs num_perm >= 2 and shingle >= 1, got {self.num_perm}, {self.shingle}")


def _integrate(f, lo: float, hi: float, steps: int = 200) -> float:
    x = np.linspace(lo, hi, steps + 1)
    y = f(x)
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())


def lsh_bands(threshold: float, num_perm: int, fp_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted false positive area
    (candidate probability below the threshold) plus false negative area (miss probability above it)."""
    best, best_error = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        candidate = lambda s, b=bands, r=rows: 1 - (1 - s ** r) ** b  # noqa: E731
        false_pos = _integrate(candidate, 0.0, threshold)
        false_neg = _integrate(lambda s: 1 - candidate(s), threshold, 1.0)
        error = fp_weight * false_pos + (1 - fp_weight) * false_neg
        if error < best_error:
            best, best_error = (bands, rows), error
    return best


class MinHasher:
    """Signatures of documents: (K,) uint32 each, the same for the same text in every run."""

    def __init__(self, config: MinHashConfig):
        self.config = config
        rng = np.random.default_rng(config.seed)
        self.a = rng.integers(1, int(PRIME), size=config.num_perm, dtype=np.uint64)  # (K,)
        self.b = rng.integers(0, int(PRIME), size=config.num_perm, dtype=np.uint64)  # (K,)
        self.words = WordHasher()

    def shingles(self, text: str) -> np.ndarray:
        """(S,) distinct 32-bit shingle hashes (as uint64) of a text; a text shorter than one shingle is
        one shingle of all its words."""
        hashes = self.words(normalized_words(text))
        grams = ngram_hashes(hashes, min(self.config.shingle, max(hashes.size, 1)))
        folded = (grams ^ (grams >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
        return np.unique(folded % PRIME)

    def signature_of_shingles(self, shingles: np.ndarray) -> np.ndarray:
        """(K,) uint32 minimum of each hash function over (S,) shingles; all 2^32 - 1 for an empty set."""
        out = np.full(self.config.num_perm, np.iinfo(np.uint32).max, dtype=np.uint64)
        for start in range(0, shingles.size, _CHUNK):
            x = shingles[start:start + _CHUNK, None]  # (S, 1)
            np.minimum(out, ((self.a * x + self.b) % PRIME).min(axis=0), out=out)  # (S, K) -> (K,)
        return out.astype(np.uint32)

    def signature(self, text: str) -> np.ndarray:
        return self.signature_of_shingles(self.shingles(text))


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))


def candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Pairs (i, j), i < j, of rows of (N, K) signatures that agree on every row of some band."""
    pairs: set[tuple[int, int]] = set()
    for band in range(bands):
        block = np.ascontiguousarray(signatures[:, band * rows:(band + 1) * rows])  # (N, r)
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows))).ravel()  # one bucket key per row
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        for lo, hi in zip(starts, np.r_[starts[1:], len(order)]):
            if hi - lo > 1:
                pairs.update(bucket_pairs([int(m) for m in order[lo:hi]]))
    return pairs


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(N, bands) uint64: each band of each (N, K) signature row hashed to 8 bytes (BLAKE2b), so a
    document's LSH buckets take 8 bytes a band in memory instead of 4 x rows. Two different bands
    collide with probability 2^-64: the candidates are the same as `candidate_pairs`'s."""
    out = np.empty((len(signatures), bands), dtype=np.uint64)
    for band in range(bands):
        block = np.ascontiguousarray(signatures[:, band * rows:(band + 1) * rows])  # (N, r)
        out[:, band] = [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")
                        for row in block]
    return out


def candidate_pairs_of_keys(keys: np.ndarray) -> set[tuple[int, int]]:
    """`candidate_pairs` from the band keys (N, bands) of `band_keys`: the same buckets, the same pairs."""
    pairs: set[tuple[int, int]] = set()
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")
        sorted_keys = keys[order, band]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        for lo, hi in zip(starts, np.r_[starts[1:], len(order)]):
            if hi - lo > 1:
                pairs.update(bucket_pairs([int(m) for m in order[lo:hi]]))
    return pairs


def bucket_pairs(members: list[int]) -> list[tuple[int, int]]:
    """The candidate pairs (i, j), i < j, of the documents sharing one LSH bucket."""
    members = sorted(members)
    if len(members) <= _ALL_PAIRS:
        return [(m, k) for i, m in enumerate(members) for k in members[i + 1:]]
    return [(members[0], k) for k in members[1:]]  # a crowded bucket: pairing each with the first keeps this linear


def near_duplicate_groups(signatures: np.ndarray, config: MinHashConfig) -> tuple[np.ndarray, int, int]:
    """(N,) index of each document's cluster representative (the earliest member), with the (bands,
    rows) used. Clusters join candidate pairs whose estimated Jaccard reaches the threshold."""
    bands, rows = lsh_bands(config.threshold, config.num_perm)
    return cluster_pairs(signatures, candidate_pairs(signatures, bands, rows), config.threshold), bands, rows


def cluster_pairs(signatures: np.ndarray, pairs: set[tuple[int, int]], threshold: float) -> np.ndarray:
    """(N,) cluster representative (earliest member) of each row of (N, K) signatures, joining the
    candidate pairs whose estimated Jaccard reaches the threshold (in sorted pair order). Only the
    rows of candidate pairs are read, so `signatures` may be a view of rows on disk (len and [i])."""
    parent = np.arange(len(signatures))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for i, j in sorted(pairs):
        if estimated_jaccard(signatures[i], signatures[j]) >= threshold:
            ri, rj = root(i), root(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    return np.array([root(i) for i in range(len(signatures))], dtype=np.int64)
