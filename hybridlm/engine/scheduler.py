"""The scheduler: which sequences compute how many tokens each step. Pure Python over plain data.

As vLLM v1 does it, there are no prefill and decode phases: every request has tokens still to
compute (`len(tokens) - num_computed`: its whole prompt when it arrives, one token once it
decodes), and each step spends a token budget on them:

  1. running sequences first, oldest first: each gets min(what it still needs, the budget left,
     `long_prefill`) tokens, so a long prompt is prefilled in chunks between decode steps;
  2. then waiting requests, in arrival order, while the budget, `max_num_seqs` and the free blocks
     allow; a request's prefix found in the prefix cache is not computed again.

When the blocks a running sequence needs are not free, the newest running sequence is preempted
by recompute: its blocks are released, it goes back to the front of the queue, and it later
recomputes its prompt and the tokens it generated (prefix caching usually makes that cheap). Never
an error. A finished or aborted sequence releases its blocks at once.

"static" scheduling (the benchmark's baseline) admits a batch only when nothing runs, and the
next batch waits for the longest member of the current one.

Hybrid models also get a Mamba state row per running sequence, and prefill chunks end exactly at
the positions where a state snapshot is to be kept (snapshots.py).

The scheduler decides and does the bookkeeping; what it decides to copy between tensors (state
rows, tail blocks) it returns as plain tuples for the engine to apply.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field

from .block_pool import BlockPool, hash_blocks
from .config import EngineConfig
from .request import FINISHED, RUNNING, WAITING, Request
from .snapshots import SnapshotStore


@dataclass
class Schedule:
    """One step's decisions."""

    work: list[tuple[Request, int]] = field(default_factory=list)  # (request, tokens this step), in order
    preempted: list[Request] = field(default_factory=list)
    state_inits: list[tuple[int, int | None]] = field(default_factory=list)  # (row, copy from row | None = zero)
    block_copies: list[tuple[int, int, int]] = field(default_factory=list)  # (src, dst, n tokens)

    @property
    def n_tokens(self) -> int:
        return sum(n for _, n in self.work)


@dataclass
class SchedulerStats:
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache (first admissions)
    prefix_hits: int = 0  # of those, tokens served from it
    snapshot_hits: int = 0  # hybrid admissions that resumed from a Mamba snapshot
    snapshot_hit_tokens: int = 0
    snapshot_misses: dict = field(default_factory=dict)  # reason -> admissions
    snapshots_saved: int = 0
    preemptions: int = 0


class Scheduler:
    def __init__(self, config: EngineConfig, pool: BlockPool, *, hybrid: bool = False,
                 snapshots: SnapshotStore | None = None):
        self.config, self.pool, self.hybrid, self.snapshots = config, pool, hybrid, snapshots
        self.bs = config.block_size
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.free_state_rows = list(range(config.max_num_seqs - 1, -1, -1)) if hybrid else []
        self.stats = SchedulerStats()
        self._batch_open = True  # static scheduling: may the current batch still admit?

    # -- requests in and out ----------------------------------------------------------------------
    def add(self, req: Request) -> None:
        req.status = WAITING
        self.waiting.append(req)

    def finish(self, req: Request, keep_state: bool = True) -> list[tuple[int, int]]:
        """Take a request out (finished, aborted or failed) and release what it holds. Returns the
        state copies (row, snapshot row) the engine must apply first: a hybrid's final state, kept
        as a snapshot (the next chat turn starts with this text) unless keep_state is False."""
        copies = []
        if req.status == RUNNING:
            self.running.remove(req)
            if keep_state and self.hybrid and req.state_slot is not None:
                copies = self._save_snapshot(req)
        elif req.status == WAITING:
            self.waiting.remove(req)
        self._release(req)
        req.status = FINISHED
        return copies

    def _release(self, req: Request) -> None:
        self.pool.release(req.blocks)
        req.blocks, req.n_registered = [], 0
        if req.state_slot is not None:
            self.free_state_rows.append(req.state_slot)
            req.state_slot = None

    def _preempt(self, req: Request, schedule: Schedule) -> None:
        self.running.remove(req)
        self._release(req)
        req.num_computed = 0
        req.status = WAITING
        req.preemptions += 1
        self.waiting.appendleft(req)
        schedule.preempted.append(req)
        self.stats.preemptions += 1

    # -- one step ---------------------------------------------------------------------------------
    def schedule(self) -> Schedule:
        schedule = Schedule()
        budget = self.config.max_num_batched_tokens
        for req in list(self.running):
            if budget <= 0:
                break
            if req.status != RUNNING:  # preempted earlier in this loop
                continue
            n = self._chunk(req, budget)
            if n <= 0:
                continue
            if not self._make_room(req, n, schedule):
                continue
            self._grow(req, n)
            schedule.work.append((req, n))
            budget -= n
        if not self.running:  # static: the last batch is done, the next may form
            self._batch_open = True
        if not schedule.preempted:
            budget = self._admit(schedule, budget)
        if self.config.scheduling == "static" and self.running:
            self._batch_open = False
        return schedule

    def _chunk(self, req: Request, budget: int) -> int:
        """Tokens req computes this step: what it needs, within the budget and long_prefill, and
        cut at its next snapshot position."""
        n = min(len(req.tokens) - req.num_computed, budget, self.config.long_prefill)
        points = req.snapshot_points
        i = bisect.bisect_right(points, req.num_computed)
        if i < len(points):
            n = min(n, points[i] - req.num_computed)
        return n

    def _blocks_needed(self, req: Request, n: int) -> int:
        return -(-(req.num_computed + n) // self.bs) - len(req.blocks)

    def _make_room(self, req: Request, n: int, schedule: Schedule) -> bool:
        """Free enough blocks for req's n tokens: evict snapshot tails, then preempt the newest
        running sequences (req itself last). False if req was preempted."""
        needed = self._blocks_needed(req, n)
        if needed > self.pool.n_free and self.snapshots is not None:
            self.snapshots.release_blocks(needed - self.pool.n_free)
        while needed > self.pool.n_free:
            victim = self.running[-1]
            self._preempt(victim, schedule)
            if victim is req:
                return False
        return True

    def _grow(self, req: Request, n: int) -> None:
        needed = self._blocks_needed(req, n)
        if needed > 0:
            req.blocks += self.pool.allocate(needed)

    def _admit(self, schedule: Schedule, budget: int) -> int:
        static = self.config.scheduling == "static"
        if static and not self._batch_open:
            return budget
        while self.waiting and len(self.running) < self.config.max_num_seqs and (budget > 0 or static):
            req = self.waiting[0]
            plan, n, needed = self._plan_admission(req, budget)
            if needed > self.pool.n_free and self.snapshots is not None:
                self.snapshots.release_blocks(needed - self.pool.n_free)
                plan, n, needed = self._plan_admission(req, budget)  # the release may have evicted the plan's
            if needed > self.pool.n_free:
                break
            self.waiting.popleft()
            self._start(req, plan, schedule)
            if n > 0:
                self._grow(req, n)
                schedule.work.append((req, n))
                budget -= n
        return budget

    def _plan_admission(self, req: Request, budget: int) -> tuple["_PrefixPlan", int, int]:
        """(prefix plan, tokens to compute this step, free blocks that takes) for waiting req.
        Sets req.snapshot_points; changes nothing else."""
        plan = self._prefix(req)
        req.snapshot_points = self._snapshot_points(req, plan)
        n = 0
        if budget > 0:
            req.num_computed = plan.cached  # _chunk reads it
            n = self._chunk(req, budget)
            req.num_computed = 0
        tail = 1 if plan.tail is not None else 0
        fresh = max(0, -(-(plan.cached + n) // self.bs) - len(plan.blocks) - tail)
        reused_free = sum(1 for b in plan.blocks if self.pool.ref[b] == 0)  # cache hits still in the free queue
        return plan, n, fresh + reused_free + tail

    # -- prefix caching ---------------------------------------------------------------------------
    def _prefix(self, req: Request) -> "_PrefixPlan":
        """Where req can resume from the cache (no side effects)."""
        if not self.config.enable_prefix_caching:
            return _PrefixPlan()
        salt, bs = req.params.cache_salt, self.bs
        keys = req.block_keys
        if len(keys) < len(req.tokens) // bs:
            keys += hash_blocks(req.tokens, bs, salt, keys[-1] if keys else None, len(keys) * bs)
        max_len = len(req.tokens) - 1  # at least one token is computed, for its logits
        blocks = []
        for key in keys[:max_len // bs]:
            block = self.pool.lookup(key)
            if block is None:
                break
            blocks.append(block)
        if not self.hybrid:
            return _PrefixPlan(blocks, len(blocks) * bs, kv_blocks=len(blocks))
        if self.snapshots is None:
            return _PrefixPlan(kv_blocks=len(blocks), reason="no_snapshot" if blocks else "no_cached_prefix")
        found = self.snapshots.find(req.tokens, keys, len(blocks), max_len, salt)
        if found.snapshot is None:
            return _PrefixPlan(kv_blocks=len(blocks), reason=found.reason)
        snap = found.snapshot
        return _PrefixPlan(blocks[:snap.length // bs], snap.length, snap, snap.tail_block, len(blocks))

    def _start(self, req: Request, plan: "_PrefixPlan", schedule: Schedule) -> None:
        """Admit req: take its cached blocks, a state row, and note the copies to make."""
        first = req.cached_tokens is None
        self.pool.touch(plan.blocks)
        req.blocks = list(plan.blocks)
        req.n_registered = len(plan.blocks)
        if plan.tail is not None:
            block = self.pool.allocate(1)[0]
            schedule.block_copies.append((plan.tail, block, plan.cached % self.bs))
            req.blocks.append(block)
        req.num_computed = plan.cached
        if self.hybrid:
            req.state_slot = self.free_state_rows.pop()
            schedule.state_inits.append((req.state_slot, None if plan.snapshot is None else plan.snapshot.row))
        if first:
            req.cached_tokens = plan.cached
            req.first_scheduled = time.monotonic()
            if self.config.enable_prefix_caching:
                self.stats.prefix_queries += req.prompt_len
                self.stats.prefix_hits += plan.cached
                if self.hybrid:
                    self._count_snapshot(plan)
        req.status = RUNNING
        self.running.append(req)

    def _count_snapshot(self, plan: "_PrefixPlan") -> None:
        if plan.snapshot is not None:
            self.stats.snapshot_hits += 1
            self.stats.snapshot_hit_tokens += plan.cached
        else:
            misses = self.stats.snapshot_misses
            misses[plan.reason] = misses.get(plan.reason, 0) + 1

    def _snapshot_points(self, req: Request, plan: "_PrefixPlan") -> list[int]:
        """The lengths where req's prefill stops to keep a Mamba snapshot (sorted)."""
        if self.snapshots is None or self.snapshots.n_rows == 0:
            return []
        points = set(req.snapshot_at)
        junction = plan.kv_blocks * self.bs
        if junction > plan.cached:  # KV was cached further than any snapshot: keep one there
            points.add(junction)
        if self.config.snapshot_interval:
            step = self.config.snapshot_interval * self.bs
            points.update(range(step, req.prompt_len + 1, step))
        return sorted(p for p in points if plan.cached < p <= len(req.tokens))

    def _save_snapshot(self, req: Request) -> list[tuple[int, int]]:
        """Keep req's current Mamba state (at num_computed) unless one is kept there already."""
        length = req.num_computed
        if self.snapshots is None or length == 0 or req.state_slot is None:
            return []
        self._extend_keys(req)
        key = SnapshotStore.key_at(req.tokens, length, req.block_keys, self.bs, req.params.cache_salt)
        if self.snapshots.has(key):
            return []
        if length // self.bs > req.n_registered:  # its full blocks are not all in the prefix cache
            return []
        tail = req.blocks[length // self.bs] if length % self.bs else None
        snap = self.snapshots.add(key, length, tail)
        if snap is None:
            return []
        self.stats.snapshots_saved += 1
        return [(req.state_slot, snap.row)]

    def _extend_keys(self, req: Request) -> None:
        keys, bs = req.block_keys, self.bs
        if len(keys) < len(req.tokens) // bs:
            keys += hash_blocks(req.tokens, bs, req.params.cache_salt, keys[-1] if keys else None, len(keys) * bs)

    # -- after the forward ------------------------------------------------------------------------
    def computed(self, req: Request, n: int) -> list[tuple[int, int]]:
        """req's n scheduled tokens are now in the cache: register its newly full blocks with the
        prefix cache; returns the state copies of a snapshot due at this length."""
        req.num_computed += n
        if self.config.enable_prefix_caching:
            self._extend_keys(req)
            full = min(req.num_computed // self.bs, len(req.block_keys))
            for i in range(req.n_registered, full):
                self.pool.cache_block(req.blocks[i], req.block_keys[i])
            req.n_registered = max(req.n_registered, full)
        if self.hybrid and req.num_computed in req.snapshot_points:
            return self._save_snapshot(req)
        return []

    @property
    def n_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)


@dataclass
class _PrefixPlan:
    blocks: list[int] = field(default_factory=list)  # cached full blocks to take
    cached: int = 0  # tokens not to compute
    snapshot: object = None  # hybrids: the Snapshot to resume from
    tail: int | None = None  # block whose first cached % block_size rows to copy
    kv_blocks: int = 0  # leading full blocks the KV prefix cache had
    reason: str | None = None  # hybrids: why no snapshot
