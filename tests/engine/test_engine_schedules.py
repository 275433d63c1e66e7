"""Random schedules through the real step loop of a tiny model: arrivals sharing prefixes,
cancellations, failing forwards and a pool small enough to preempt. Every request ends, every
block comes back, and the greedy tokens of every request that completed equal `generate` alone."""

import random

import pytest

from hybridlm.engine import RequestParams
from tests.engine.conftest import alone, small_engine


class Flaky:
    """Wraps a model's forward so chosen calls raise (the engine must fail only that step)."""

    def __init__(self, model, fail_calls):
        self.model, self.fail_calls, self.calls = model, set(fail_calls), 0
        self.real = model.forward

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls in self.fail_calls:
            raise RuntimeError("injected failure")
        return self.real(*args, **kwargs)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("which", ["dense", "hybrid"])
def test_random_schedules_end_every_request_and_return_every_block(which, seed, request, monkeypatch):
    model = request.getfixturevalue(which)
    rng = random.Random(seed)
    engine = small_engine(model, block_size=4, kv_memory=12 * 4 * small_engine(model).capacity(1).kv_bytes_per_token,
                          mamba_state_memory=3 * max(1, small_engine(model).capacity(1).state_bytes_per_seq),
                          max_num_batched_tokens=rng.choice([12, 24]), long_prefill=rng.choice([4, 8]),
                          scheduling=rng.choice(["continuous", "continuous", "static"]))
    flaky = Flaky(model, rng.sample(range(3, 30), 3))
    monkeypatch.setattr(model, "forward", flaky)
    bases = [[rng.randrange(1024) for _ in range(20)] for _ in range(2)]
    prompts, ended, aborted, records = {}, {}, set(), {}
    for t in range(2000):
        if t < 40 and rng.random() < 0.6:
            prompt = rng.choice(bases)[:rng.randint(1, 20)] + [rng.randrange(1024) for _ in range(rng.randint(0, 6))]
            rid = engine.add_request(prompt, RequestParams(max_tokens=rng.randint(1, 8), temperature=0,
                                                            ignore_eos=True))
            prompts[rid], records[rid] = prompt, engine.requests[rid]
        live = [r for r in prompts if r not in ended and r not in aborted]
        if live and rng.random() < 0.05:
            rid = rng.choice(live)
            engine.abort(rid)
            aborted.add(rid)
        for out in engine.step():
            if out.finished:
                ended[out.request_id] = out
        engine.pool.check()
        if t >= 40 and not engine.has_unfinished():
            break
    monkeypatch.undo()
    assert engine.metrics()["preemptions"] > 0 and engine.metrics()["prefix_cache_hits"] > 0
    assert set(prompts) == set(ended) | aborted and not engine.requests
    assert flaky.calls > 5
    tails = {s.tail_block for s in engine.snapshots.entries.values()} - {None} if engine.snapshots is not None else set()
    assert engine.pool.n_used == len(tails)
    completed = [r for r, o in ended.items() if o.finish_reason == "length"]
    assert completed and any(o.finish_reason == "error" for o in ended.values())
    for rid in completed:
        got = records[rid].output_ids
        assert got == alone(model, prompts[rid], len(got)), rid
