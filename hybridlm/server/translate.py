"""OpenAI schema <-> engine: response bodies, stream chunks, usage and logprobs in both of OpenAI's
formats. Pure functions over plain data; no I/O."""

from __future__ import annotations

import time
import uuid
from functools import lru_cache

from ..tokenizer import Tokenizer, byte_alphabet


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class TokenText:
    """id -> (text, UTF-8 bytes) of one token, as logprobs report it. Byte-level BPE tokens are
    spelled in GPT-2's byte alphabet; a token that is part of a multi-byte character has bytes that
    do not decode alone, so its text holds U+FFFD while `bytes` stays exact (OpenAI does the same)."""

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._bytes_of = {c: b for b, c in byte_alphabet().items()}
        self.lookup = lru_cache(maxsize=65536)(self._lookup)

    def _lookup(self, token_id: int) -> tuple[str, list[int]]:
        piece = self._tok.id_to_token(token_id)
        if piece is not None and piece and all(c in self._bytes_of for c in piece):
            raw = bytes(self._bytes_of[c] for c in piece)
        else:  # a special token, or a tokenizer not spelled in the byte alphabet
            raw = self._tok.decode([token_id]).encode()
        return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(entries: list, text: TokenText, top_n: int) -> dict:
    """Chat format: {"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}. `entries` are
    the engine's TokenLogprob (token_id, logprob, top)."""
    content = []
    for e in entries:
        token, raw = text.lookup(e.token_id)
        tops = [{"token": text.lookup(i)[0], "logprob": _finite(lp), "bytes": text.lookup(i)[1]}
                for i, lp in e.top[:top_n]]
        content.append({"token": token, "logprob": _finite(e.logprob), "bytes": raw, "top_logprobs": tops})
    return {"content": content}


def completion_logprobs(entries: list, text: TokenText, top_n: int, offset: int) -> dict:
    """Completions format: {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}.
    `offset` is the character offset of the first token in the choice's text."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for e in entries:
        token = text.lookup(e.token_id)[0]
        tokens.append(token)
        token_logprobs.append(_finite(e.logprob))
        tops.append({text.lookup(i)[0]: _finite(lp) for i, lp in e.top[:top_n]} if top_n else None)
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def _finite(x: float) -> float:
    # JSON has no -Infinity; OpenAI reports -9999.0 for tokens with zero probability
    return max(float(x), -9999.0)


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def finish_reason(engine_reason: str | None) -> str | None:
    """OpenAI's names: stop (EOS or a stop string), length (max_tokens or the context)."""
    if engine_reason in (None, ""):
        return None
    if engine_reason in ("stop", "eos", "stop_string", "stop_token"):
        return "stop"
    if engine_reason in ("length", "max_tokens", "context"):
        return "length"
    return engine_reason


def completion_body(rid: str, created: int, model: str, choices: list[dict], use: dict | None) -> dict:
    body = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if use is not None:
        body["usage"] = use
    return body


def chat_body(rid: str, created: int, model: str, choices: list[dict], use: dict | None) -> dict:
    body = {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices}
    if use is not None:
        body["usage"] = use
    return body


def completion_chunk(rid: str, created: int, model: str, choices: list[dict], use: dict | None = None) -> dict:
    body = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if use is not None:
        body["usage"] = use
    return body


def chat_chunk(rid: str, created: int, model: str, choices: list[dict], use: dict | None = None) -> dict:
    body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if use is not None:
        body["usage"] = use
    return body
