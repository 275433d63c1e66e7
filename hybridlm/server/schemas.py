"""Request bodies of the OpenAI API as pydantic models, validated strictly.

Strict types (no "1" for 1, no true for 1) and `extra="forbid"`: a field we do not know is a 400
naming it, never silently ignored. Fields OpenAI defines that we do not implement are declared,
so that `refuse_unsupported` can name them with a clear reason when a request sets them.
Ranges are OpenAI's where it states them (temperature 0..2, penalties -2..2, top_logprobs 0..20).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import APIError, bad_request, unsupported, validation_message

MAX_N = 16  # choices per request: each is a sequence in the engine
MAX_STOP = 16  # stop strings per request


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False  # a last chunk with `usage` and no choices


class _Sampling(_Strict):
    """Fields both endpoints share."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1)  # beyond OpenAI (as vLLM): 0 or -1 = off
    min_p: float = Field(0.0, ge=0, le=1)  # beyond OpenAI
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0, le=10)  # beyond OpenAI (CTRL-style)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # beyond OpenAI: generate max_tokens past end-of-sequence (benchmarks)
    user: str | None = None  # an end-user id; accepted and only logged nowhere, as OpenAI permits
    # OpenAI fields this server does not implement: refused when set (see refuse_unsupported)
    logit_bias: dict[str, float] | None = None
    service_tier: Any = None
    store: Any = None
    metadata: Any = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stop

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)  # completions format: top-k alternatives per token
    echo: bool = False
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, prompt):
        if isinstance(prompt, list) and (not prompt or any(isinstance(p, list) and not p for p in prompt)):
            raise ValueError("an empty list is not a prompt")
        if isinstance(prompt, list) and len(prompt) > MAX_N and not isinstance(prompt[0], int):
            raise ValueError(f"at most {MAX_N} prompts per request")
        return prompt

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # chat fields this server does not implement
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    response_format: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None


_WHY = {
    "tools": "tool calling is not implemented", "tool_choice": "tool calling is not implemented",
    "functions": "function calling is not implemented", "function_call": "function calling is not implemented",
    "parallel_tool_calls": "tool calling is not implemented",
    "response_format": "only {\"type\": \"text\"} (plain text) is implemented",
    "logit_bias": "logit biases are not implemented", "echo": "the prompt is not echoed back",
    "best_of": "only best_of = n (or unset) is implemented", "suffix": "insertion (suffix) is not implemented",
    "name": "participant names are not passed to the chat template",
}


def refuse_unsupported(req: _Sampling) -> None:
    """A 400 naming the first field the request sets that this server does not implement."""
    set_fields = req.model_fields_set
    for field in ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "modalities",
                  "audio", "prediction", "reasoning_effort", "web_search_options", "service_tier", "store",
                  "metadata", "suffix"):
        if field in set_fields and getattr(req, field) is not None:
            raise unsupported(field, _WHY.get(field, ""))
    if req.logit_bias:
        raise unsupported("logit_bias", _WHY["logit_bias"])
    if isinstance(req, ChatCompletionRequest):
        fmt = req.response_format
        if fmt is not None and fmt != {"type": "text"}:
            raise unsupported("response_format", _WHY["response_format"])
        for i, m in enumerate(req.messages):
            if m.name is not None:
                raise unsupported(f"messages.{i}.name", _WHY["name"])
        if req.top_logprobs is not None and not req.logprobs:
            raise bad_request("top_logprobs needs logprobs set to true", "top_logprobs")
        if req.max_tokens is not None and req.max_completion_tokens is not None \
                and req.max_tokens != req.max_completion_tokens:
            raise bad_request("max_tokens and max_completion_tokens disagree; send one", "max_tokens")
    if isinstance(req, CompletionRequest):
        if req.echo:
            raise unsupported("echo", _WHY["echo"])
        if req.best_of is not None and req.best_of != req.n:
            raise unsupported("best_of", _WHY["best_of"])
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")


def parse_request(cls: type[_Sampling], body: Any) -> _Sampling:
    """Validate a decoded JSON body into `cls`; every failure is an APIError with a 4xx status."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        req = cls.model_validate(body)
    except ValidationError as err:
        message, param = validation_message(err.errors())
        raise APIError(400, message, "invalid_request_error", param, None) from None
    refuse_unsupported(req)
    return req
