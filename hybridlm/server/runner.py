"""The engine's own thread: the only code that touches the engine, which is not thread-safe.

Request handlers run on the asyncio event loop; they hand submissions and aborts to this thread
through a locked deque and a condition variable, and get each request's outputs back on an
asyncio.Queue filled with `loop.call_soon_threadsafe`. The thread steps the engine while it has
work and sleeps on the condition when it has none (no polling, no busy spin).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable


class RunnerStopped(RuntimeError):
    """The runner is shutting down (or died): it takes no more requests, and live ones end."""


@dataclass
class _Add:
    prompt_ids: list[int]
    params: Any
    snapshot_at: tuple[int, ...]
    loop: asyncio.AbstractEventLoop
    admitted: asyncio.Future  # resolved with the request id, or an exception (e.g. QueueFullError)
    queue: asyncio.Queue  # receives StepOutputs, then a RunnerStopped if the runner ends first
    submitted: float  # time.monotonic() when the handler submitted it


@dataclass
class _Live:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    submitted: float


@dataclass
class RunnerStats:
    """What the loop thread last read from the engine; replaced whole, so readers never see a mix."""

    engine: dict = field(default_factory=dict)  # engine.metrics()
    steps: int = 0  # engine.step() calls so far
    live: int = 0  # requests with an open output queue
    updated: float = 0.0  # time.monotonic() of the reading


class EngineRunner:
    """Owns `engine` on a dedicated thread. Start with `start()`, end with `shutdown()`."""

    def __init__(self, engine, stats_interval_s: float = 0.25, on_step: Callable[[list], None] | None = None):
        self._engine = engine
        self._cond = threading.Condition()
        self._commands: deque = deque()
        self._live: dict[str, _Live] = {}  # loop thread only
        self._stopping = False
        self._accepting = True  # False once shutdown began: new requests get RunnerStopped (503)
        self._thread = threading.Thread(target=self._run, name="hybridlm-engine", daemon=True)
        self._stats_interval = stats_interval_s
        self._on_step = on_step  # called on the loop thread with each step's outputs (tests, metrics)
        self.stats = RunnerStats()
        self.error: BaseException | None = None  # set if the loop thread itself failed

    # -- called from the event loop -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    async def submit(self, prompt_ids: list[int], params, snapshot_at=(),
                     queue: asyncio.Queue | None = None) -> tuple[str, asyncio.Queue]:
        """Queue a request; returns (request id, output queue) once the engine admitted it. Several
        requests may share one `queue` (the choices of one API call); outputs carry their request id.
        Raises whatever `engine.add_request` raised (QueueFullError, ValueError), or RunnerStopped."""
        loop = asyncio.get_running_loop()
        cmd = _Add(list(prompt_ids), params, tuple(snapshot_at), loop, loop.create_future(),
                   queue if queue is not None else asyncio.Queue(), time.monotonic())
        self._post(cmd)
        try:
            rid = await asyncio.shield(cmd.admitted)
        except asyncio.CancelledError:  # the client left while we waited: drop the request once it lands
            cmd.admitted.add_done_callback(self._abort_if_admitted)
            raise
        return rid, cmd.queue

    def _abort_if_admitted(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is None:
            try:
                self.abort(future.result())
            except RunnerStopped:
                pass

    def abort(self, request_id: str) -> None:
        """Cancel a request (its blocks are freed by the engine). Unknown or finished ids are ignored."""
        self._post(("abort", request_id))

    def stop_accepting(self) -> None:
        """Refuse new requests from now on; those in flight go on."""
        with self._cond:
            self._accepting = False

    def cancel_all(self) -> None:
        """Abort every request in flight; their handlers get RunnerStopped and end their responses."""
        try:
            self._post(("cancel_all",))
        except RunnerStopped:
            pass

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Abort what is left, stop the thread and wait for it."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _post(self, command) -> None:
        with self._cond:
            if self._stopping or (isinstance(command, _Add) and not self._accepting):
                raise RunnerStopped("the server is shutting down")
            self._commands.append(command)
            self._cond.notify()

    # -- the loop thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as err:  # the thread must not die silently: fail every live request
            self.error = err
            self._end_all(RunnerStopped(f"the engine thread failed: {err!r}"))
            with self._cond:
                self._stopping = True
                failed = list(self._commands)
                self._commands.clear()
            self._reject(failed, RunnerStopped(f"the engine thread failed: {err!r}"))

    def _loop(self) -> None:
        engine = self._engine
        while True:
            with self._cond:
                while not self._commands and not self._stopping and not engine.has_unfinished():
                    self._read_stats(force=True)
                    self._cond.wait()
                commands = list(self._commands)
                self._commands.clear()
                stopping = self._stopping
            if stopping:
                self._reject([c for c in commands if isinstance(c, _Add)], RunnerStopped("the server is shutting down"))
                for rid in list(self._live):
                    engine.abort(rid)
                self._end_all(RunnerStopped("the server is shutting down"))
                self._read_stats(force=True)
                return
            for cmd in commands:
                self._apply(cmd)
            if engine.has_unfinished():
                try:
                    outputs = engine.step()
                except Exception as err:  # a failed step ends the requests it was serving, not the server
                    for rid in list(self._live):
                        engine.abort(rid)
                    self._end_all(RuntimeError(f"the engine failed a step: {err!r}"))
                    continue
                self._deliver(outputs)
                self.stats = RunnerStats(self.stats.engine, self.stats.steps + 1, len(self._live), self.stats.updated)
            self._read_stats(force=False)

    def _apply(self, cmd) -> None:
        if isinstance(cmd, _Add):
            try:
                rid = self._engine.add_request(cmd.prompt_ids, cmd.params, snapshot_at=cmd.snapshot_at)
            except Exception as err:
                cmd.loop.call_soon_threadsafe(_settle, cmd.admitted, None, err)
                return
            self._live[rid] = _Live(cmd.loop, cmd.queue, cmd.submitted)
            cmd.loop.call_soon_threadsafe(_settle, cmd.admitted, rid, None)
        elif cmd[0] == "cancel_all":
            for rid in list(self._live):
                self._engine.abort(rid)
            self._end_all(RunnerStopped("the server is shutting down"))
        else:
            _, rid = cmd
            if self._live.pop(rid, None) is not None:
                self._engine.abort(rid)

    def _deliver(self, outputs: list) -> None:
        batches: dict[asyncio.AbstractEventLoop, list] = {}
        for out in outputs:
            live = self._live.get(out.request_id)
            if live is None:  # aborted meanwhile: nobody is listening
                continue
            batches.setdefault(live.loop, []).append((live.queue, out))
            if out.finished:  # the engine dropped its record with this output
                del self._live[out.request_id]
        for loop, items in batches.items():
            _call_soon(loop, _put_all, items)
        if self._on_step is not None:
            self._on_step(outputs)

    def _end_all(self, error: BaseException) -> None:
        live, self._live = self._live, {}
        for entry in live.values():
            _call_soon(entry.loop, entry.queue.put_nowait, error)

    @staticmethod
    def _reject(commands: list, error: BaseException) -> None:
        for cmd in commands:
            if isinstance(cmd, _Add):
                _call_soon(cmd.loop, _settle, cmd.admitted, None, error)

    def _read_stats(self, force: bool) -> None:
        now = time.monotonic()
        if force or now - self.stats.updated >= self._stats_interval:
            self.stats = RunnerStats(dict(self._engine.metrics()), self.stats.steps, len(self._live), now)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _put_all(items: list) -> None:
    for queue, out in items:
        queue.put_nowait(out)


def _call_soon(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the event loop is closed: its handlers are gone, nothing to tell
        pass
