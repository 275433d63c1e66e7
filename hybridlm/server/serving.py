"""One API request in flight: its choices as engine sequences, their outputs as they come, their
cancellation, and their latency. Shared by /v1/completions and /v1/chat/completions, streaming or not."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from .errors import APIError, bad_request, overloaded, queue_full
from .latency import request_latency
from .runner import EngineRunner, RunnerStopped
from .telemetry import ServerMetrics


@dataclass
class Choice:
    """One sequence of a request: choice `index`, from prompt `prompt_index`."""

    index: int
    prompt_index: int
    prompt_tokens: int
    request_id: str | None = None
    text: list[str] = field(default_factory=list)
    logprobs: list = field(default_factory=list)  # the engine's TokenLogprob entries
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str | None = None  # the engine's reason, set when the sequence ended
    chunk_times: list[float] = field(default_factory=list)  # monotonic, one per engine output
    queue_s: float | None = None  # arrival -> first scheduled, when the engine reports it

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Update:
    """One engine output for one choice, as the handler sees it."""

    choice: Choice
    text: str
    token_ids: list[int]
    logprobs: list
    finished: bool


class Generation:
    """Submit every choice of a request, then iterate their outputs with `updates()`. `close()`
    cancels what has not finished and records the request's metrics; call it exactly once."""

    def __init__(self, runner: EngineRunner, metrics: ServerMetrics, arrival: float,
                 prompts: list[tuple[list[int], tuple[int, ...]]], n: int, params_for: Callable[[int, int], Any],
                 max_queue: int):
        self._runner, self._metrics, self.arrival = runner, metrics, arrival
        self._prompts, self._params_for, self._max_queue = prompts, params_for, max_queue
        self.choices = [Choice(p * n + j, p, len(ids)) for p, (ids, _) in enumerate(prompts) for j in range(n)]
        self._n = n
        self._queue: asyncio.Queue = asyncio.Queue()
        self._by_id: dict[str, Choice] = {}
        self._closed = False

    async def start(self) -> None:
        """Admit every choice or none: on any refusal the admitted ones are cancelled and an APIError
        (429 full queue, 400 bad request, 503 shutting down) is raised."""
        from ..engine import QueueFullError

        async def one(choice: Choice):
            ids, snapshot_at = self._prompts[choice.prompt_index]
            params = self._params_for(choice.prompt_index, choice.index % self._n)
            return await self._runner.submit(ids, params, snapshot_at, queue=self._queue)

        results = await asyncio.gather(*(one(c) for c in self.choices), return_exceptions=True)
        error = next((r for r in results if isinstance(r, BaseException)), None)
        for choice, result in zip(self.choices, results):
            if not isinstance(result, BaseException):
                choice.request_id = result[0]
                self._by_id[result[0]] = choice
        if error is None:
            return
        for rid in self._by_id:
            self._runner.abort(rid)
        self._by_id.clear()
        self._closed = True
        if isinstance(error, QueueFullError):
            raise queue_full(self._max_queue) from None
        if isinstance(error, RunnerStopped):
            raise overloaded(str(error)) from None
        if isinstance(error, ValueError):
            raise bad_request(str(error)) from None
        raise error

    async def updates(self) -> AsyncIterator[Update]:
        """Outputs in arrival order until every choice has finished. An engine failure or shutdown
        raises RunnerStopped / RuntimeError."""
        pending = sum(1 for c in self.choices if not c.done)
        while pending:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            choice = self._by_id.get(item.request_id)
            if choice is None or choice.done:
                continue
            now = time.monotonic()
            choice.chunk_times.append(now)
            update = self._absorb(choice, item)
            if update.finished:
                pending -= 1
            yield update

    def _absorb(self, choice: Choice, out) -> Update:
        ids = list(out.new_token_ids)
        logprobs = list(out.logprobs or [])
        choice.text.append(out.text_delta)
        choice.logprobs += logprobs
        choice.completion_tokens = out.completion_tokens
        choice.cached_tokens = out.cached_tokens
        choice.prompt_tokens = out.prompt_tokens
        if choice.queue_s is None and getattr(out, "first_scheduled", None) is not None:
            choice.queue_s = max(0.0, out.first_scheduled - self.arrival)
        if out.finished:
            choice.finish_reason = out.finish_reason or "stop"
            if out.finish_reason == "error":  # the engine failed this sequence (others go on)
                raise RuntimeError(getattr(out, "error", None) or "the engine failed this request")
        return Update(choice, out.text_delta, ids, logprobs, out.finished)

    def close(self, reason_if_unfinished: str = "abort") -> None:
        """Cancel unfinished choices in the engine (freeing their blocks) and record metrics."""
        if self._closed:
            return
        self._closed = True
        for choice in self.choices:
            if not choice.done and choice.request_id is not None:
                try:
                    self._runner.abort(choice.request_id)
                except RunnerStopped:
                    pass
                choice.finish_reason = reason_if_unfinished
            latency = request_latency(self.arrival, choice.chunk_times, choice.completion_tokens)
            self._metrics.observe(latency, choice.queue_s, choice.finish_reason, choice.prompt_tokens,
                                  choice.cached_tokens, choice.completion_tokens)

    # -- totals -----------------------------------------------------------------------------------
    def usage_numbers(self) -> tuple[int, int, int]:
        """(prompt, completion, cached) tokens. A prompt counts once however many choices share it;
        its cached tokens are the fewest any of its choices got (the part never computed for it)."""
        prompt = cached = 0
        for p in range(len(self._prompts)):
            mine = [c for c in self.choices if c.prompt_index == p]
            prompt += mine[0].prompt_tokens
            cached += min(c.cached_tokens for c in mine)
        return prompt, sum(c.completion_tokens for c in self.choices), cached


async def watch_disconnect(request, generation_task: asyncio.Task, interval: float = 0.5) -> None:
    """Cancel `generation_task` when the client of a non-streaming request goes away."""
    while not generation_task.done():
        if await request.is_disconnected():
            generation_task.cancel()
            return
        await asyncio.sleep(interval)


def context_error(prompt_tokens: int, max_tokens: int | None, context: int, param: str) -> APIError | None:
    """OpenAI's 400 for a prompt (plus requested completion) longer than the model's context."""
    if prompt_tokens >= context:
        return bad_request(f"This model's maximum context length is {context} tokens. However, your prompt has "
                           f"{prompt_tokens} tokens, leaving no room for a completion.", param,
                           "context_length_exceeded")
    if max_tokens is not None and prompt_tokens + max_tokens > context:
        return bad_request(f"This model's maximum context length is {context} tokens. However, you requested "
                           f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for "
                           f"the completion). Reduce the prompt or max_tokens.", "max_tokens",
                           "context_length_exceeded")
    return None
