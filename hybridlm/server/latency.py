"""Per-request latency, defined once for the server's /metrics and for bench/serve.py's client.

These are the definitions of `vllm bench serve`, applied to one request:
  start  the send time (client) or arrival time (server)
  chunk  a streamed event that carries a choice (text may be empty: a token that ends
         mid-character, or the finish); the usage-only event at the end is not a chunk
  TTFT   first chunk - start
  ITL    the gaps between consecutive chunks after the first
  TPOT   (E2E - TTFT) / (output tokens - 1); undefined for a single token
  E2E    end - start, end being the last chunk (or the stream's end if later)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Latency:
    ttft: float | None  # seconds; None when no token came
    itl: list[float] = field(default_factory=list)  # seconds, one per gap
    tpot: float | None = None  # seconds per token after the first
    e2e: float = 0.0  # seconds


def request_latency(start: float, chunk_times: list[float], output_tokens: int, end: float | None = None) -> Latency:
    """The latency figures of one request from monotonic timestamps (seconds)."""
    last = chunk_times[-1] if chunk_times else start
    e2e = max(end if end is not None else last, last) - start
    if not chunk_times:
        return Latency(ttft=None, e2e=e2e)
    ttft = chunk_times[0] - start
    itl = [b - a for a, b in zip(chunk_times, chunk_times[1:])]
    tpot = (e2e - ttft) / (output_tokens - 1) if output_tokens > 1 else None
    return Latency(ttft=ttft, itl=itl, tpot=tpot, e2e=e2e)
