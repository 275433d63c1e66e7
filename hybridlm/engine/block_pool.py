"""The KV block pool: pure Python bookkeeping over block ids, no tensors.

A block holds `block_size` tokens of K and V for every attention layer (the tensors live in
paged_cache.py, indexed by these ids). Each block has a reference count: the running sequences
whose block tables hold it. A block at zero references is free; if it still carries the hash of
the tokens it holds, it is also a *cached* block that a later request with the same prefix can
take back (prefix caching, as vLLM v1 does it):

    free queue (eviction order):  [uncached ... | cached, least recently freed ... most recently freed]
    hash -> block:                 every block that holds a full, hashed prefix block (used or free)

Allocation pops the front of the free queue; popping a cached block evicts its hash (LRU: the
block freed longest ago goes first, and uncached blocks are taken before any cached one). A cache
hit on a free block takes it out of the queue. So `n_free + n_used == n_blocks` always, and a
cached block is never handed out for new tokens while its hash still points at it.

A full block's hash covers its parent's hash, its own tokens and a salt (an adapter or tenant id),
so equal hashes mean equal prefixes. SHA-256 rather than Python's `hash`: a 64-bit collision would
silently serve one prompt another's keys.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from typing import Iterable, Sequence


class NoFreeBlocksError(RuntimeError):
    """The pool has fewer free blocks than were asked for (callers check `n_free` first)."""


def hash_block(parent: bytes | None, tokens: Sequence[int], salt: str | None = None) -> bytes:
    """The prefix-cache key of a full block: SHA-256 over (parent key, token ids, salt)."""
    h = hashlib.sha256(parent or b"root")
    h.update(array("q", tokens).tobytes())
    if salt:
        h.update(b"\x00salt:" + salt.encode())
    return h.digest()


def hash_blocks(tokens: Sequence[int], block_size: int, salt: str | None = None, parent: bytes | None = None,
                start: int = 0) -> list[bytes]:
    """Keys of the full blocks of tokens[start:] (start a multiple of block_size), chained from `parent`."""
    keys = []
    for i in range(start, len(tokens) - block_size + 1, block_size):
        parent = hash_block(parent, tokens[i:i + block_size], salt)
        keys.append(parent)
    return keys


class BlockPool:
    """Reference counts, the free queue and the hash map of `n_blocks` blocks."""

    def __init__(self, n_blocks: int, enable_caching: bool = True):
        if n_blocks <= 0:
            raise ValueError(f"a block pool needs at least one block, got {n_blocks}")
        self.n_blocks, self.enable_caching = n_blocks, enable_caching
        self.ref = [0] * n_blocks
        self.block_hash: list[bytes | None] = [None] * n_blocks
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(n_blocks))
        self.cached: dict[bytes, int] = {}
        self.evictions = 0  # cached blocks reused for other tokens

    # -- counts ------------------------------------------------------------------------------------
    @property
    def n_free(self) -> int:
        return len(self.free)

    @property
    def n_used(self) -> int:
        return self.n_blocks - len(self.free)

    @property
    def n_cached(self) -> int:
        """Blocks holding a hashed prefix (in use or free)."""
        return len(self.cached)

    # -- allocation --------------------------------------------------------------------------------
    def allocate(self, n: int) -> list[int]:
        """n fresh blocks with one reference each, evicting the least recently freed cached ones."""
        if n > len(self.free):
            raise NoFreeBlocksError(f"{n} blocks asked for, {len(self.free)} free")
        out = []
        for _ in range(n):
            block, _ = self.free.popitem(last=False)
            self._evict(block)
            self.ref[block] = 1
            out.append(block)
        return out

    def _evict(self, block: int) -> None:
        key = self.block_hash[block]
        if key is not None:
            del self.cached[key]
            self.block_hash[block] = None
            self.evictions += 1

    def touch(self, blocks: Iterable[int]) -> None:
        """Take one more reference to each block (a prefix-cache hit); a free one leaves the queue."""
        for block in blocks:
            if self.ref[block] == 0:
                del self.free[block]
            self.ref[block] += 1

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block. A block reaching zero joins the free queue: a cached one
        at the back (evicted last), an uncached one at the front (reused first). Blocks are released
        last-first, so a sequence's tail blocks, the least likely to be shared, are evicted first."""
        for block in reversed(blocks):
            if self.ref[block] <= 0:
                raise RuntimeError(f"block {block} released more often than it was taken")
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.free[block] = None
                if self.block_hash[block] is None:
                    self.free.move_to_end(block, last=False)

    # -- prefix cache ------------------------------------------------------------------------------
    def lookup(self, key: bytes) -> int | None:
        """The block holding the prefix block with this key, or None. Takes no reference."""
        return self.cached.get(key) if self.enable_caching else None

    def cache_block(self, block: int, key: bytes) -> bool:
        """Record that `block` (in use, full) holds the prefix block `key`. False if another block
        already holds it: the duplicate stays uncached (block tables are append-only, so the
        sequence keeps its own copy rather than switching)."""
        if not self.enable_caching or key in self.cached or self.block_hash[block] is not None:
            return False
        self.cached[key] = block
        self.block_hash[block] = key
        return True

    def reset_cache(self) -> int:
        """Forget every cached free block's hash (the blocks stay free). Returns how many."""
        dropped = 0
        for block in self.free:
            if self.block_hash[block] is not None:
                self._evict(block)
                self.evictions -= 1
                dropped += 1
        return dropped

    def check(self) -> None:
        """Raise if the bookkeeping is inconsistent (tests call this after every operation)."""
        assert all(r >= 0 for r in self.ref), "negative reference count"
        assert set(self.free) == {b for b in range(self.n_blocks) if self.ref[b] == 0}, "free queue != unreferenced blocks"
        assert self.n_free + sum(1 for r in self.ref if r > 0) == self.n_blocks
        assert all(self.block_hash[b] == k for k, b in self.cached.items()), "hash map and block hashes disagree"
        assert sum(h is not None for h in self.block_hash) == len(self.cached)
