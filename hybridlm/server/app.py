"""The FastAPI application: OpenAI's /v1 endpoints, /health, /metrics, /stats and the playground.

It translates only: requests become engine requests through `EngineRunner`, engine outputs become
OpenAI bodies and stream chunks. No sampling or scheduling happens here.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..tokenizer import Tokenizer, TokenizerError
from . import sse
from .chat import chat_prompt
from .config import ServeConfig
from .errors import APIError, bad_request, model_not_found, unauthorized
from .metrics import CONTENT_TYPE
from .runner import EngineRunner, RunnerStopped
from .schemas import ChatCompletionRequest, CompletionRequest, parse_request
from .serving import Generation, context_error, watch_disconnect
from .telemetry import ServerMetrics
from .translate import (TokenText, chat_body, chat_chunk, chat_logprobs, completion_body, completion_chunk,
                        completion_logprobs, finish_reason, new_id, now, usage)

MAX_BODY_BYTES = 16 * 2**20  # a request body larger than this is refused (413) before it is parsed
MAX_CHOICES = 64  # sequences one request may start (prompts x n)


@dataclass
class ServerContext:
    """What the handlers need; built by `server.main.build_context` or by tests."""

    config: ServeConfig
    runner: EngineRunner
    tokenizer: Tokenizer
    max_seq_len: int  # the model's context: prompt + completion tokens
    make_params: Callable[..., Any]  # server.params.request_params bound to the engine's RequestParams
    max_queue: int  # the engine's queue bound, for the 429 message
    facts: dict = field(default_factory=dict)  # model facts for /v1/models and /stats (kv capacity...)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    created: int = field(default_factory=now)
    adapters: dict[str, EngineRunner] = field(default_factory=dict)  # served name -> runner of base + that LoRA adapter

    def __post_init__(self) -> None:
        self.token_text = TokenText(self.tokenizer)

    @property
    def runners(self) -> dict[str, EngineRunner]:
        """Every served model id and its runner: the base under config.model_name, then the adapters."""
        return {self.config.model_name: self.runner, **self.adapters}


def create_app(ctx: ServerContext) -> FastAPI:
    """The ASGI app. Its lifespan starts the runner's thread (if not started) and shuts it down."""

    async def lifespan(app):
        for runner in ctx.runners.values():
            if not runner._thread.is_alive():
                runner.start()
        yield
        for runner in ctx.runners.values():
            await asyncio.to_thread(runner.shutdown, ctx.config.shutdown_timeout_s + 5)

    app = FastAPI(title="hybridlm", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.ctx = ctx
    page = resources.files(__package__).joinpath("playground.html").read_text(encoding="utf-8")

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        ctx.metrics.rejected.inc(status=str(err.status))
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        body = APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}", kind).body()
        return JSONResponse(body, status_code=err.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> JSONResponse:
        if not ctx.runner.alive:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(ctx.metrics.render(ctx.runner.stats.engine), media_type=CONTENT_TYPE)

    @app.get("/stats")
    async def stats() -> JSONResponse:
        """A small JSON view of the engine for the playground (and humans)."""
        st = ctx.runner.stats
        return JSONResponse({"model": ctx.config.model_name, "engine": st.engine, "steps": st.steps,
                             "live_requests": st.live, "max_seq_len": ctx.max_seq_len, **ctx.facts})

    @app.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        _authorize(ctx, request)
        return JSONResponse({"object": "list", "data": [_model_card(ctx, name) for name in ctx.runners]})

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> JSONResponse:
        _authorize(ctx, request)
        _check_model(ctx, name)
        return JSONResponse(_model_card(ctx, name))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        arrival = time.monotonic()
        _authorize(ctx, request)
        req = parse_request(CompletionRequest, await _json_body(request))
        runner = _check_model(ctx, req.model)
        prompts = [(ids, (len(ids),)) for ids in (_prompt_ids(ctx, p) for p in req.prompts())]
        return await _respond(ctx, runner, request, req, prompts, arrival, chat=False,
                              top_n=req.logprobs, max_tokens=req.max_tokens)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        arrival = time.monotonic()
        _authorize(ctx, request)
        req = parse_request(ChatCompletionRequest, await _json_body(request))
        runner = _check_model(ctx, req.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        try:
            ids, boundaries = chat_prompt(ctx.tokenizer, messages)
        except TokenizerError as err:
            raise bad_request(str(err), "messages") from None
        top_n = (req.top_logprobs or 0) if req.logprobs else None
        return await _respond(ctx, runner, request, req, [(ids, tuple(boundaries))], arrival, chat=True, top_n=top_n,
                              max_tokens=req.max_completion_tokens or req.max_tokens)

    return app


# -- helpers ----------------------------------------------------------------------------------------

def _authorize(ctx: ServerContext, request: Request) -> None:
    key = ctx.config.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise unauthorized()


async def _json_body(request: Request) -> Any:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
        raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes", "invalid_request_error")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes", "invalid_request_error")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad_request(f"the request body is not valid JSON: {err}") from None


def _check_model(ctx: ServerContext, name: str) -> EngineRunner:
    """The runner serving model id `name` (the base or one of its adapters); 404 for any other."""
    runner = ctx.runners.get(name)
    if runner is None:
        raise model_not_found(name, "', '".join(ctx.runners))
    return runner


def _model_card(ctx: ServerContext, name: str) -> dict:
    card = {"id": name, "object": "model", "created": ctx.created, "owned_by": "hybridlm",
            "max_model_len": ctx.max_seq_len}
    return card if name == ctx.config.model_name else {**card, "parent": ctx.config.model_name}


def _prompt_ids(ctx: ServerContext, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        ids = ctx.tokenizer.encode(prompt)
    else:
        ids = list(prompt)
        vocab = ctx.tokenizer.vocab_size
        bad = next((i for i in ids if not 0 <= i < vocab), None)
        if bad is not None:
            raise bad_request(f"token id {bad} is outside the vocabulary (0..{vocab - 1})", "prompt")
    if not ids:
        raise bad_request("the prompt is empty", "prompt")
    return ids


async def _respond(ctx: ServerContext, runner: EngineRunner, request: Request, req, prompts, arrival: float,
                   chat: bool, top_n: int | None, max_tokens: int | None) -> Response:
    if len(prompts) * req.n > MAX_CHOICES:
        raise bad_request(f"{len(prompts)} prompts x n={req.n} is over {MAX_CHOICES} sequences in one request", "n")
    for ids, _ in prompts:
        err = context_error(len(ids), max_tokens, ctx.max_seq_len, "messages" if chat else "prompt")
        if err is not None:
            raise err
    stops = req.stop_list()

    # unset max_tokens: as far as the context goes, but no further than the KV pool can hold
    room = min(ctx.max_seq_len, ctx.facts.get("kv_tokens", ctx.max_seq_len))

    def params_for(prompt_index: int, j: int):
        budget = max_tokens or max(1, room - len(prompts[prompt_index][0]))
        return ctx.make_params(req, max_tokens=budget, seed=None if req.seed is None else req.seed + j,
                               stop=stops, top_logprobs=top_n)

    gen = Generation(runner, ctx.metrics, arrival, prompts, req.n, params_for, ctx.max_queue)
    await gen.start()
    rid, created, model = new_id("chatcmpl" if chat else "cmpl"), now(), req.model
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = _chat_events if chat else _completion_events
        return EventStream(events(ctx, gen, rid, created, model, top_n, include_usage), on_close=gen.close)
    task = asyncio.ensure_future(_drain(gen))
    watcher = asyncio.ensure_future(watch_disconnect(request, task))
    try:
        await task
    except asyncio.CancelledError:
        gen.close()
        if not task.cancelled():
            raise
        return Response(status_code=499)  # the client is gone; nobody reads this
    except (RunnerStopped, RuntimeError) as err:
        gen.close(reason_if_unfinished="error")
        raise _generation_error(err) from None
    finally:
        watcher.cancel()
    gen.close()
    use = usage(*gen.usage_numbers())
    choices = [_final_choice(ctx, c, chat, top_n) for c in gen.choices]
    body = (chat_body if chat else completion_body)(rid, created, model, choices, use)
    return JSONResponse(body)


async def _drain(gen: Generation) -> None:
    async for _ in gen.updates():
        pass


def _final_choice(ctx: ServerContext, c, chat: bool, top_n: int | None) -> dict:
    text = "".join(c.text)
    reason = finish_reason(c.finish_reason)
    if chat:
        lp = chat_logprobs(c.logprobs, ctx.token_text, top_n) if top_n is not None else None
        return {"index": c.index, "message": {"role": "assistant", "content": text}, "logprobs": lp,
                "finish_reason": reason}
    lp = completion_logprobs(c.logprobs, ctx.token_text, top_n, 0) if top_n is not None else None
    return {"index": c.index, "text": text, "logprobs": lp, "finish_reason": reason}


async def _chat_events(ctx, gen: Generation, rid, created, model, top_n, include_usage):
    started: set[int] = set()
    extra = {"usage": None} if include_usage else {}
    try:
        async for u in gen.updates():
            i = u.choice.index
            # the role rides on each choice's first chunk, so every chunk is one engine output
            delta = {"content": u.text} if i in started else {"role": "assistant", "content": u.text}
            started.add(i)
            lp = chat_logprobs(u.logprobs, ctx.token_text, top_n) if top_n is not None else None
            choice = {"index": i, "delta": delta, "logprobs": lp,
                      "finish_reason": finish_reason(u.choice.finish_reason) if u.finished else None}
            yield sse.event({**chat_chunk(rid, created, model, [choice]), **extra})
        if include_usage:
            yield sse.event(chat_chunk(rid, created, model, [], usage(*gen.usage_numbers())))
        yield sse.DONE
    except (RunnerStopped, RuntimeError) as err:
        yield _stream_error(err)


async def _completion_events(ctx, gen: Generation, rid, created, model, top_n, include_usage):
    offsets: dict[int, int] = {}
    extra = {"usage": None} if include_usage else {}
    try:
        async for u in gen.updates():
            i = u.choice.index
            lp = (completion_logprobs(u.logprobs, ctx.token_text, top_n, offsets.get(i, 0))
                  if top_n is not None else None)
            offsets[i] = offsets.get(i, 0) + len(u.text)
            choice = {"index": i, "text": u.text, "logprobs": lp,
                      "finish_reason": finish_reason(u.choice.finish_reason) if u.finished else None}
            yield sse.event({**completion_chunk(rid, created, model, [choice]), **extra})
        if include_usage:
            yield sse.event(completion_chunk(rid, created, model, [], usage(*gen.usage_numbers())))
        yield sse.DONE
    except (RunnerStopped, RuntimeError) as err:
        yield _stream_error(err)


def _generation_error(err: BaseException) -> APIError:
    """503 when the server is going away (retry elsewhere), 500 when the engine failed the request."""
    if isinstance(err, RunnerStopped):
        return APIError(503, f"generation stopped: {err}", "server_error", None, "unavailable")
    return APIError(500, f"generation failed: {err}", "server_error", None, "engine_error")


def _stream_error(err: BaseException) -> bytes:
    # headers are sent already, so the failure travels in the stream, as OpenAI does
    return sse.event(_generation_error(err).body())


class EventStream(StreamingResponse):
    """An SSE response that runs `on_close` however it ends: finished, failed, or the client gone
    (Starlette cancels the body iterator on disconnect; `on_close` then aborts the sequences)."""

    def __init__(self, content, on_close: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
