"""The scheduler and block pool over synthetic requests and no model: budgets, admission order,
chunking, preemption, prefix-cache hits and snapshots, and no leaks under random schedules."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from hybridlm.engine import EngineConfig, RequestParams
from hybridlm.engine.block_pool import BlockPool
from hybridlm.engine.request import FINISHED, RUNNING, Request
from hybridlm.engine.scheduler import Scheduler
from hybridlm.engine.snapshots import SnapshotStore


def make(rid, prompt, max_tokens=4, snapshot_at=()):
    params = RequestParams(max_tokens=max_tokens, temperature=0)
    return Request(rid, len(prompt), params, list(prompt), 0.0, snapshot_at=tuple(snapshot_at))


def setup(n_blocks=64, hybrid=False, snapshot_rows=0, **overrides):
    config = EngineConfig(**{**dict(block_size=4, max_num_seqs=4, max_num_batched_tokens=16, long_prefill=8),
                             **overrides})
    pool = BlockPool(n_blocks, config.enable_prefix_caching)
    store = SnapshotStore(list(range(config.max_num_seqs, config.max_num_seqs + snapshot_rows)), pool,
                          config.block_size) if hybrid else None
    return config, pool, Scheduler(config, pool, hybrid=hybrid, snapshots=store)


def step(sched, token=7):
    """One step of a fake model: every scheduled token is computed; finished prompts get a token."""
    schedule = sched.schedule()
    assert schedule.n_tokens <= sched.config.max_num_batched_tokens
    done = []
    for req, n in schedule.work:
        assert req.status == RUNNING and n > 0
        assert len(req.blocks) * sched.bs >= req.num_computed + n  # blocks cover what is written
        sched.computed(req, n)
        if req.num_computed == len(req.tokens):
            req.tokens.append(token)
            if req.n_output >= req.params.max_tokens:
                done.append(req)
    for req in done:
        sched.finish(req)
    return schedule


def test_decodes_go_first_and_long_prompts_are_chunked():
    _, _, sched = setup()
    a = make("a", range(3), max_tokens=10)
    sched.add(a)
    step(sched)  # a's whole prompt (3 tokens) and its first token
    b = make("b", range(100, 130))
    sched.add(b)
    s = step(sched)
    assert [(r.request_id, n) for r, n in s.work] == [("a", 1), ("b", 8)]  # long_prefill caps the chunk
    s = step(sched)
    assert [(r.request_id, n) for r, n in s.work] == [("a", 1), ("b", 8)]


def test_budget_and_max_num_seqs_limit_admission_in_arrival_order():
    _, _, sched = setup(max_num_seqs=2, max_num_batched_tokens=10)
    for i in range(3):
        sched.add(make(f"r{i}", range(10 * i, 10 * i + 6)))
    s = step(sched)
    assert [(r.request_id, n) for r, n in s.work] == [("r0", 6), ("r1", 4)]
    assert [r.request_id for r in sched.waiting] == ["r2"]  # max_num_seqs = 2


def test_blocks_running_out_preempt_the_newest_and_it_recomputes():
    _, pool, sched = setup(n_blocks=6, max_num_batched_tokens=16, long_prefill=16)
    a, b = make("a", range(8), max_tokens=12), make("b", range(50, 58), max_tokens=12)
    sched.add(a)
    sched.add(b)
    step(sched)
    assert pool.n_free == 2
    preempted = []
    for _ in range(40):
        preempted += step(sched).preempted
        pool.check()
        if not sched.n_unfinished:
            break
    assert preempted and preempted[0] is b  # the newest goes first
    assert sched.stats.preemptions >= 1
    assert a.finished and b.finished and a.n_output == 12 and b.n_output == 12
    assert pool.n_used == 0


def test_static_scheduling_waits_for_the_longest_member():
    _, _, sched = setup(scheduling="static", max_num_seqs=2)
    short, long_, late = make("s", range(4), max_tokens=1), make("l", range(4), max_tokens=6), make("x", range(4))
    for r in (short, long_, late):
        sched.add(r)
    admitted_late = None
    for i in range(20):
        s = step(sched)
        if late in [r for r, _ in s.work] and admitted_late is None:
            admitted_late = i
            assert long_.finished  # not before the whole batch is done
        if not sched.n_unfinished:
            break
    assert admitted_late is not None and short.finished and late.finished


def test_prefix_cache_hit_skips_full_blocks_and_leaves_one_token():
    _, pool, sched = setup()
    first = make("a", range(12), max_tokens=1)
    sched.add(first)
    while sched.n_unfinished:
        step(sched)
    second = make("b", list(range(12)) + [99])
    sched.add(second)
    s = sched.schedule()
    assert second.cached_tokens == 12 and s.work == [(second, 1)]
    same = make("c", range(12))  # the identical prompt: the last block is recomputed for the logits
    sched.add(same)
    sched.schedule()
    assert same.cached_tokens == 8
    assert sched.stats.prefix_queries == 12 + 13 + 12 and sched.stats.prefix_hits == 20


def test_hybrid_snapshot_at_caller_position_is_resumed_with_its_tail_block():
    _, pool, sched = setup(hybrid=True, snapshot_rows=2)
    a = make("a", range(10), max_tokens=1, snapshot_at=(6,))
    sched.add(a)
    s = sched.schedule()
    assert s.work == [(a, 6)]  # the chunk stops at the snapshot position
    copies = sched.computed(a, 6)
    assert copies == [(a.state_slot, 4)] or copies == [(a.state_slot, 5)]
    while sched.n_unfinished:
        step(sched)
    b = make("b", list(range(6)) + [50, 51])
    sched.add(b)
    s = sched.schedule()
    assert b.cached_tokens == 6 and s.work == [(b, 2)]
    (src, dst, n), = s.block_copies
    assert n == 2 and dst == b.blocks[1]  # positions 4, 5 copied into b's own block
    assert s.state_inits == [(b.state_slot, sched.snapshots.entries[(b.block_keys[0], (4, 5))].row)]
    c = make("c", list(range(8)) + [70])  # KV blocks cached up to 8, snapshots at 6 and 10 only
    sched.add(c)
    sched.schedule()
    assert c.cached_tokens == 6


def run_all(sched, *reqs):
    for r in reqs:
        sched.add(r)
    while sched.n_unfinished:
        step(sched)


def test_hybrid_junction_snapshot_serves_the_next_request():
    _, _, sched = setup(hybrid=True, snapshot_rows=2)
    run_all(sched, make("a", range(9), max_tokens=1))
    assert sched.stats.snapshot_misses == {"no_cached_prefix": 1}
    b = make("b", list(range(8)) + [40, 41, 42])  # shares 2 cached blocks; only a's end state (9) was kept
    run_all(sched, b)
    assert sched.stats.snapshot_misses == {"no_cached_prefix": 1, "no_snapshot": 1}
    assert 8 in b.snapshot_points  # the junction: the next request sharing 8 tokens resumes there
    c = make("c", list(range(9)) + [1])  # a's end state (9) was evicted by b's; the junction (8) serves
    sched.add(c)
    sched.schedule()
    assert c.cached_tokens == 8 and sched.stats.snapshot_hits == 1


def test_hybrid_miss_reasons_name_an_evicted_snapshot_and_evicted_kv():
    _, pool, sched = setup(n_blocks=7, hybrid=True, snapshot_rows=1)
    run_all(sched, make("a", range(9), max_tokens=1), make("a2", range(200, 209), max_tokens=1))
    c = make("c", list(range(9)) + [1])  # a's blocks are still cached, its snapshot at 9 is not
    run_all(sched, c)
    assert c.cached_tokens == 0 and sched.stats.snapshot_misses["snapshot_evicted"] == 1
    _, pool, sched = setup(n_blocks=7, hybrid=True, snapshot_rows=2)
    run_all(sched, make("a", range(9), max_tokens=1))  # snapshot at 9 holds block 2; blocks 0, 1 cached
    run_all(sched, make("big", range(500, 524), max_tokens=1))  # takes the 6 other blocks: evicts 0, 1
    d = make("d", list(range(9)) + [1, 2])  # a's snapshot exists, the KV blocks before it do not
    run_all(sched, d)
    assert d.cached_tokens == 0 and sched.stats.snapshot_misses["kv_evicted"] == 1


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.booleans(), st.sampled_from(["continuous", "static"]))
def test_random_schedules_finish_everything_and_leak_nothing(seed, hybrid, scheduling):
    """Random arrivals sharing prefixes, aborts, failures and a pool small enough to preempt."""
    rng = random.Random(seed)
    _, pool, sched = setup(n_blocks=14, hybrid=hybrid, snapshot_rows=3, scheduling=scheduling,
                           max_num_batched_tokens=12, long_prefill=rng.choice([4, 8, 12]))
    bases = [list(range(100 * i, 100 * i + 12)) for i in range(3)]
    made = []
    for t in range(400):
        if t < 60 and rng.random() < 0.3:
            prompt = rng.choice(bases)[:rng.randint(1, 12)] + [rng.randrange(1000) for _ in range(rng.randint(0, 6))]
            points = tuple(sorted({rng.randint(1, len(prompt))})) if rng.random() < 0.5 else ()
            req = make(f"r{t}", prompt, max_tokens=rng.randint(1, 10), snapshot_at=points)
            made.append(req)
            sched.add(req)
        live = [r for r in made if not r.finished]
        if live and rng.random() < 0.08:  # a cancellation or a failed request, running or waiting
            sched.finish(rng.choice(live), keep_state=rng.random() < 0.5)
        step(sched, token=rng.randrange(1000))
        pool.check()
        if sched.snapshots is not None:
            sched.snapshots.check()
        assert len(sched.running) <= sched.config.max_num_seqs
        tails = {s.tail_block for s in sched.snapshots.entries.values()} - {None} if sched.snapshots else set()
        held = {b for r in sched.running for b in r.blocks} | tails
        assert pool.n_used == len(held)
        if t >= 60 and not sched.n_unfinished:
            break
    assert all(r.status == FINISHED for r in made)
    if sched.snapshots is not None:
        sched.snapshots.release_blocks(pool.n_blocks)
    assert pool.n_used == 0 and pool.n_free == pool.n_blocks
