"""Server-sent events as OpenAI streams them: `data: <json>\\n\\n` per chunk, then `data: [DONE]`."""

from __future__ import annotations

import json
from typing import Any, Iterator

DONE = b"data: [DONE]\n\n"


def event(payload: Any) -> bytes:
    """One SSE event carrying a JSON payload. JSON never holds a raw newline, so one `data:` line suffices."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def parse_events(lines: Iterator[str]) -> Iterator[Any]:
    """The inverse, for clients and tests: decoded JSON payloads of `data:` lines until `[DONE]`.
    Raises ValueError if the stream ends without `[DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments (':'), other SSE fields
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)
    raise ValueError("the event stream ended without data: [DONE]")
