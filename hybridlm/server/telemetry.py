"""The metrics /metrics exposes: request latencies observed by the server, engine state read from
the engine thread's last snapshot."""

from __future__ import annotations

from .latency import Latency
from .metrics import Counter, Gauge, Histogram, Registry

_DEFINITIONS = ("Definitions as bench/serve.py and `vllm bench serve` compute them; start = the request's "
                "arrival at the server, a chunk = a streamed event carrying a choice (one per engine output for that choice: new tokens, the finish, or both; the usage-only event is not a chunk).")
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
_SLOW = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


class ServerMetrics:
    """Every metric of /metrics, in one registry."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        p = "hybridlm_"
        self.running = r.add(Gauge(p + "num_requests_running", "Sequences the engine is computing (prefill or decode)."))
        self.waiting = r.add(Gauge(p + "num_requests_waiting", "Sequences queued in the engine, not yet scheduled."))
        self.kv_used = r.add(Gauge(p + "kv_blocks_used", "KV-cache blocks referenced by running or waiting sequences "
                                   "(0 when idle: cached prefix blocks no sequence holds are free)."))
        self.kv_total = r.add(Gauge(p + "kv_blocks_total", "KV-cache blocks in the pool."))
        self.kv_cached = r.add(Gauge(p + "kv_blocks_cached", "KV-cache blocks holding a hashed prefix, in use or free "
                                     "(reusable until evicted)."))
        self.kv_evictions = r.add(Counter(p + "kv_block_evictions_total", "Cached prefix blocks reused for other tokens."))
        self.prefix_queries = r.add(Counter(p + "prefix_cache_queries_total",
                                            "Prompt tokens looked up in the prefix cache."))
        self.prefix_hits = r.add(Counter(p + "prefix_cache_hits_total",
                                         "Prompt tokens found in the prefix cache (not prefilled again)."))
        self.snapshot_hits = r.add(Counter(p + "mamba_snapshot_hits_total",
                                           "Hybrid-model requests that resumed from a saved Mamba state snapshot."))
        self.snapshot_hit_tokens = r.add(Counter(p + "mamba_snapshot_hit_tokens_total",
                                                 "Prompt tokens hybrid-model requests skipped by resuming from a snapshot."))
        self.snapshot_misses = r.add(Counter(p + "mamba_snapshot_misses_total",
                                             "Hybrid-model requests admitted without a usable Mamba snapshot, by the "
                                             "engine's reason (e.g. no_cached_prefix: nothing of the prompt was "
                                             "cached; no_snapshot: KV blocks were cached but no state was kept there).",
                                             ["reason"]))
        self.snapshots_saved = r.add(Counter(p + "mamba_snapshots_saved_total", "Mamba state snapshots kept."))
        self.preemptions = r.add(Counter(p + "preemptions_total",
                                         "Sequences preempted (blocks freed, recomputed later) when blocks ran out."))
        self.spec_drafts = r.add(Counter(p + "spec_decode_draft_tokens_total",
                                         "Speculative decoding (--speculative): draft tokens proposed and verified."))
        self.spec_accepted = r.add(Counter(p + "spec_decode_accepted_tokens_total",
                                           "Speculative decoding: draft tokens the verification accepted."))
        self.prompt_tokens = r.add(Counter(p + "prompt_tokens_total", "Prompt tokens of finished requests."))
        self.cached_tokens = r.add(Counter(p + "prompt_tokens_cached_total",
                                           "Prompt tokens of finished requests served from the prefix cache."))
        self.generation_tokens = r.add(Counter(p + "generation_tokens_total", "Tokens generated for finished requests."))
        self.requests = r.add(Counter(p + "requests_total", "Sequences ended, by finish reason "
                                      "(stop, length, abort = cancelled or disconnected, error).", ["finish_reason"]))
        self.rejected = r.add(Counter(p + "requests_rejected_total", "Requests answered with an error status, by status.",
                                      ["status"]))
        self.ttft = r.add(Histogram(p + "time_to_first_token_seconds",
                                    "TTFT = first chunk - arrival. " + _DEFINITIONS, _SLOW))
        self.itl = r.add(Histogram(p + "inter_token_latency_seconds",
                                   "ITL = each gap between consecutive chunks after the first. " + _DEFINITIONS, _FAST))
        self.tpot = r.add(Histogram(p + "time_per_output_token_seconds",
                                    "TPOT = (E2E - TTFT) / (output tokens - 1), for requests of 2 or more tokens. "
                                    + _DEFINITIONS, _FAST))
        self.e2e = r.add(Histogram(p + "e2e_request_latency_seconds",
                                   "E2E = last chunk - arrival. " + _DEFINITIONS, _SLOW))
        self.queue = r.add(Histogram(p + "request_queue_time_seconds",
                                     "Queue time = first scheduled by the engine - arrival (waiting for a slot "
                                     "and for the server to hand the request to the engine).", _SLOW))

    def observe(self, latency: Latency, queue_s: float | None, finish_reason: str, prompt_tokens: int,
                cached_tokens: int, completion_tokens: int) -> None:
        """Record one ended sequence."""
        self.requests.inc(finish_reason=finish_reason or "unknown")
        if finish_reason in ("abort", "error"):
            return  # a cancelled sequence's timings measure the client, not the server
        self.prompt_tokens.inc(prompt_tokens)
        self.cached_tokens.inc(cached_tokens)
        self.generation_tokens.inc(completion_tokens)
        if latency.ttft is not None:
            self.ttft.observe(latency.ttft)
        for gap in latency.itl:
            self.itl.observe(gap)
        if latency.tpot is not None:
            self.tpot.observe(latency.tpot)
        self.e2e.observe(latency.e2e)
        if queue_s is not None:
            self.queue.observe(queue_s)

    def update_from_engine(self, engine: dict) -> None:
        """Copy the engine thread's last `engine.metrics()` snapshot into the gauges and counters."""
        get = engine.get
        self.running.set(get("num_running", 0))
        self.waiting.set(get("num_waiting", 0))
        self.kv_used.set(get("kv_blocks_used", 0))
        self.kv_total.set(get("kv_blocks_total", 0))
        self.kv_cached.set(get("kv_blocks_cached", 0))
        self.kv_evictions.set_total(get("kv_block_evictions", 0))
        self.prefix_queries.set_total(get("prefix_cache_queries", 0))
        self.prefix_hits.set_total(get("prefix_cache_hits", 0))
        self.snapshot_hits.set_total(get("mamba_snapshot_hits", 0))
        self.snapshot_hit_tokens.set_total(get("mamba_snapshot_hit_tokens", 0))
        self.snapshots_saved.set_total(get("mamba_snapshots_saved", 0))
        for reason, count in (get("mamba_snapshot_misses") or {}).items():
            self.snapshot_misses.set_total(count, reason=reason)
        self.preemptions.set_total(get("preemptions", 0))
        self.spec_drafts.set_total(get("spec_draft_tokens", 0))
        self.spec_accepted.set_total(get("spec_accepted_tokens", 0))

    def render(self, engine: dict) -> str:
        self.update_from_engine(engine)
        return self.registry.render()
