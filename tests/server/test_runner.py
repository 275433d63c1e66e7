"""The engine thread's mechanics, with a scripted stand-in for the engine (the real one is behind
every other server test): outputs reach the right queue, an idle runner does not spin, a failing
step ends only the requests in it, a refusal reaches the caller, shutdown ends what is left."""

import asyncio
import time
from dataclasses import dataclass

import pytest

from hybridlm.engine import QueueFullError
from hybridlm.server.runner import EngineRunner, RunnerStopped


@dataclass
class Out:
    request_id: str
    new_token_ids: list
    finished: bool


class ScriptedEngine:
    """Each request yields `max_tokens` one-token outputs, one per step; `fail_next` makes the next
    step raise; more than `max_queue` live requests raise QueueFullError."""

    def __init__(self, max_queue=8):
        self.live, self.aborted, self.steps, self.fail_next, self.max_queue = {}, [], 0, False, max_queue
        self._n = 0

    def add_request(self, prompt_ids, params, snapshot_at=()):
        if len(self.live) >= self.max_queue:
            raise QueueFullError("full")
        self._n += 1
        rid = f"r{self._n}"
        self.live[rid] = params
        return rid

    def abort(self, rid):
        if self.live.pop(rid, None) is not None:
            self.aborted.append(rid)

    def has_unfinished(self):
        return bool(self.live)

    def step(self):
        self.steps += 1
        time.sleep(0.001)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        outs = []
        for rid in list(self.live):
            self.live[rid] -= 1
            done = self.live[rid] == 0
            if done:
                del self.live[rid]
            outs.append(Out(rid, [1], done))
        return outs

    def metrics(self):
        return {"num_running": len(self.live)}


async def _collect(queue):
    outs = []
    while True:
        item = await queue.get()
        if isinstance(item, BaseException):
            raise item
        outs.append(item)
        if item.finished:
            return outs


@pytest.fixture
def runner():
    engine = ScriptedEngine(max_queue=2)
    r = EngineRunner(engine, stats_interval_s=0.0)
    r.start()
    yield r, engine
    r.shutdown(5)


def test_outputs_reach_their_own_queues_and_idle_does_not_spin(runner):
    r, engine = runner

    async def go():
        (a, qa), (b, qb) = await asyncio.gather(r.submit([1], 3), r.submit([2], 5))
        outs_a, outs_b = await asyncio.gather(_collect(qa), _collect(qb))
        assert {o.request_id for o in outs_a} == {a} and len(outs_a) == 3
        assert {o.request_id for o in outs_b} == {b} and len(outs_b) == 5

    asyncio.run(go())
    steps = engine.steps
    time.sleep(0.3)
    assert engine.steps == steps  # asleep on its condition, not stepping an empty engine
    assert r.stats.engine == {"num_running": 0}


def test_a_failed_step_fails_its_requests_and_the_runner_goes_on(runner):
    r, engine = runner

    async def go():
        _, q = await r.submit([1], 1000)
        engine.fail_next = True
        with pytest.raises(RuntimeError, match="boom"):
            await _collect(q)
        _, q2 = await r.submit([1], 2)
        assert len(await _collect(q2)) == 2

    asyncio.run(go())
    assert engine.aborted  # the failed step's request was taken out of the engine
    assert r.alive


def test_refusals_reach_the_caller_and_shutdown_ends_live_requests(runner):
    r, engine = runner

    async def go():
        _, q1 = await r.submit([1], 10**6)
        await r.submit([1], 10**6)
        with pytest.raises(QueueFullError):
            await r.submit([1], 1)
        await asyncio.to_thread(r.shutdown, 5)
        with pytest.raises(RunnerStopped):
            await _collect(q1)
        with pytest.raises(RunnerStopped):
            await r.submit([1], 1)

    asyncio.run(go())
    assert engine.live == {} and not r.alive


def test_cancel_all_aborts_in_flight_and_refuses_new_work(runner):
    r, engine = runner

    async def go():
        _, q = await r.submit([1], 10**6)
        r.stop_accepting()
        with pytest.raises(RunnerStopped):
            await r.submit([1], 1)
        r.cancel_all()
        with pytest.raises(RunnerStopped, match="shutting down"):
            await _collect(q)

    asyncio.run(go())
    assert engine.live == {} and len(engine.aborted) == 1
