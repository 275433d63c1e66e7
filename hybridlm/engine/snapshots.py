"""Mamba state snapshots for hybrid prefix caching: pure Python bookkeeping over state rows.

A Mamba state summarises every token so far and cannot be rewound, so cached KV blocks alone do
not let a hybrid skip a prefix: it needs the Mamba state at exactly the length it resumes from.
The engine keeps such states (rows of each Mamba layer's state pool, paged_cache.py) where reuse
really happens, not on a fixed grid:

  - where the caller says (`snapshot_at`: the end of the system prompt and of each chat turn),
  - at the junction where a request's prompt left the cached KV prefix of an earlier one (the
    next request sharing that prefix will resume there),
  - at the end of every finished request (the next chat turn starts with this one's text),
  - optionally every `snapshot_interval` blocks of a long prompt.

A snapshot at length L is keyed by the exact prefix: the prefix-cache key of its last full block
(which covers every token before it and the salt) and the tokens after that block. When L is not
a multiple of the block size, the snapshot holds a reference to the block with those tail tokens'
KV, so resuming has both halves at exactly L: the full blocks from the prefix cache, the tail
copied into a fresh block, and the Mamba state copied into the sequence's row.

Snapshots live in their own memory budget (`EngineConfig.mamba_state_memory`), evicted least
recently used; the keys of evicted snapshots are remembered (boundedly) so a miss can say why.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

from .block_pool import BlockPool

MISS_REASONS = ("no_cached_prefix", "no_snapshot", "snapshot_evicted", "kv_evicted")
_EVICTED_MEMORY = 4096  # evicted keys remembered for miss reasons


def root_key(salt: str | None) -> bytes:
    return b"root" + (salt or "").encode()


@dataclass
class Snapshot:
    key: tuple[bytes, tuple[int, ...]]  # (key of the last full block, tokens after it)
    length: int  # tokens summarised
    row: int  # the state pool row holding it
    tail_block: int | None  # block holding the tail tokens' KV (a reference is held), None if aligned


@dataclass
class Lookup:
    """Where a hybrid request can resume: `snapshot` (None on a miss) and, on a miss, why."""

    snapshot: Snapshot | None
    kv_blocks: int  # leading full blocks found in the prefix cache
    reason: str | None = None


class SnapshotStore:
    def __init__(self, rows: list[int], pool: BlockPool, block_size: int):
        self.free_rows = list(rows)
        self.n_rows = len(rows)
        self.pool, self.block_size = pool, block_size
        self.entries: OrderedDict[tuple, Snapshot] = OrderedDict()  # LRU first
        self.by_parent: dict[bytes, dict[tuple[int, ...], Snapshot]] = {}
        self.evicted: OrderedDict[tuple, None] = OrderedDict()
        self.evicted_parents: Counter[bytes] = Counter()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.entries)

    @staticmethod
    def key_at(tokens: list[int], length: int, block_keys: list[bytes], block_size: int,
               salt: str | None) -> tuple[bytes, tuple[int, ...]]:
        k = length // block_size
        parent = block_keys[k - 1] if k else root_key(salt)
        return parent, tuple(tokens[k * block_size:length])

    # -- lookup -----------------------------------------------------------------------------------
    def find(self, tokens: list[int], block_keys: list[bytes], kv_blocks: int, max_len: int,
             salt: str | None) -> Lookup:
        """The longest snapshot at L <= max_len whose full blocks are all among the `kv_blocks`
        cached ones; touched as most recently used."""
        bs = self.block_size
        top = min(max_len // bs, len(block_keys))
        for k in range(min(kv_blocks, top), -1, -1):
            snap = self._match(self.by_parent, tokens, block_keys, k, max_len, salt)
            if snap is not None:
                self.entries.move_to_end(snap.key)
                return Lookup(snap, kv_blocks)
        return Lookup(None, kv_blocks, self._reason(tokens, block_keys, kv_blocks, top, max_len, salt))

    def _match(self, table, tokens, block_keys, k, max_len, salt):
        parent = block_keys[k - 1] if k else root_key(salt)
        tails = table.get(parent)
        if not tails:
            return None
        start, best = k * self.block_size, None
        for tail, snap in tails.items():
            n = len(tail)
            if start + n <= max_len and (best is None or n > len(best[0])) and tuple(tokens[start:start + n]) == tail:
                best = (tail, snap)
        return None if best is None else best[1]

    def _reason(self, tokens, block_keys, kv_blocks, top, max_len, salt) -> str:
        for k in range(kv_blocks + 1, top + 1):
            if self._match(self.by_parent, tokens, block_keys, k, max_len, salt) is not None:
                return "kv_evicted"
        if self.evicted:
            for k in range(min(kv_blocks, top), -1, -1):
                parent = block_keys[k - 1] if k else root_key(salt)
                if parent not in self.evicted_parents:
                    continue
                for length in range(k * self.block_size, min(max_len, k * self.block_size + self.block_size - 1) + 1):
                    if (parent, tuple(tokens[k * self.block_size:length])) in self.evicted:
                        return "snapshot_evicted"
        return "no_snapshot" if kv_blocks else "no_cached_prefix"

    # -- storing ----------------------------------------------------------------------------------
    def has(self, key) -> bool:
        if key in self.entries:
            self.entries.move_to_end(key)
            return True
        return False

    def add(self, key, length: int, tail_block: int | None) -> Snapshot | None:
        """Reserve a row for a new snapshot (evicting the least recently used if full) and take a
        reference to its tail block. The caller copies the state into `snapshot.row`. None if the
        store has no rows at all."""
        if self.n_rows == 0:
            return None
        if not self.free_rows:
            self._evict(next(iter(self.entries)))
        snap = Snapshot(key, length, self.free_rows.pop(), tail_block)
        if tail_block is not None:
            self.pool.touch([tail_block])
        self.entries[key] = snap
        self.by_parent.setdefault(key[0], {})[key[1]] = snap
        if self.evicted.pop(key, 0) is None:
            self._forget_parent(key[0])
        return snap

    def _forget_parent(self, parent: bytes) -> None:
        self.evicted_parents[parent] -= 1
        if self.evicted_parents[parent] <= 0:
            del self.evicted_parents[parent]

    def drop(self, key) -> None:
        """Forget one snapshot (as an eviction, but not remembered as a miss reason)."""
        self._evict(key)
        self.evicted.pop(key, None)
        self._forget_parent(key[0])
        self.evictions -= 1

    def _evict(self, key) -> None:
        snap = self.entries.pop(key)
        tails = self.by_parent[key[0]]
        del tails[key[1]]
        if not tails:
            del self.by_parent[key[0]]
        if snap.tail_block is not None:
            self.pool.release([snap.tail_block])
        self.free_rows.append(snap.row)
        self.evicted[key] = None
        self.evicted_parents[key[0]] += 1
        if len(self.evicted) > _EVICTED_MEMORY:
            old, _ = self.evicted.popitem(last=False)
            self._forget_parent(old[0])
        self.evictions += 1

    def release_blocks(self, needed: int) -> int:
        """Evict snapshots holding tail blocks (least recently used first) until `needed` blocks
        came free or none are left; returns how many came free. Used when the KV pool runs short:
        a running sequence matters more than a cached state."""
        freed = 0
        for key in [k for k, s in self.entries.items() if s.tail_block is not None]:
            if freed >= needed:
                break
            before = self.pool.n_free
            self._evict(key)
            freed += self.pool.n_free - before
        return freed

    def check(self) -> None:
        assert len(self.entries) + len(self.free_rows) == self.n_rows
        assert sum(len(t) for t in self.by_parent.values()) == len(self.entries)
