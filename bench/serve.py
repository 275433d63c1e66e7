"""Serving under load on 127.0.0.1: hybridlm's server (continuous and static batching) against
sequential `transformers` generate and llama.cpp's OpenAI server, with `vllm bench serve`'s metrics.

    python -m bench.serve [--model smollm2-135m] [--concurrency 1,4,16,64] [--workloads random,shared-prefix]
                          [--engines continuous,static,transformers,llama.cpp] [--output-tokens 64]
                          [--prompt-tokens 128] [--threads 2] [--ttft-slo 2.0] [--tpot-slo 0.25]
    python -m bench.serve --soak 180 [--soak-streams 64] [--disconnect-prob 0.25]

Metrics (per request, as `vllm bench serve` and hybridlm's /metrics define them; see
hybridlm/server/latency.py): TTFT = first streamed chunk - send time; ITL = gaps between later
chunks; TPOT = (E2E - TTFT) / (output tokens - 1); E2E = last chunk - send time. Per run: request
throughput = completed / wall time, output throughput = output tokens / wall time, goodput =
requests meeting both SLOs (TTFT <= --ttft-slo and TPOT <= --tpot-slo) / wall time.

Workloads: `random` prompts are random token ids of the model's vocabulary, decoded to text;
`shared-prefix` prompts are one shared block of real text (Python's pydoc topics) followed by a
distinct real-text suffix, --shared-share of the prompt shared. Output lengths are drawn uniformly
in [1 - r, 1 + r] x --output-tokens (r = --range-ratio) and generated exactly (ignore_eos for
hybridlm, min_tokens for llama.cpp), greedy. Every engine gets the same requests. Engines take
turns at each (workload, concurrency) point, so noise on a shared machine hits all alike.

Engines: (a) `hybridlm serve --scheduling continuous`, (b) `--scheduling static` (a batch waits
for its longest member), each a subprocess; (c) `transformers` generate, in this process, one
request after another, float32 (its throughput = tokens / wall time; concurrency does not apply,
so it runs once per workload on the first --seq-requests requests); (d) llama.cpp's server
(`python -m llama_cpp.server` from --llama-python, default $HYBRIDLM_LLAMA_PYTHON, this Python or
/work/llamavenv's, as bench/llama_peer.py looks), skipped with a note when none imports llama_cpp.

Soak (--soak SECONDS): a continuous-batching server gets --soak-streams concurrent streaming
clients for SECONDS; each request is cut off after a random number of chunks with probability
--disconnect-prob. It reports that every request ended, that no KV block is held afterwards (read
from /metrics), and the server's resident memory (from /proc/PID/status) after warm-up and at the end.

Progress goes to stderr; a table, then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hybridlm.server.latency import request_latency

from .common import emit_json, environment, print_table, progress

MODEL_ID = "bench"  # the model id every server is started with and every request names


# -- workloads ----------------------------------------------------------------------------------------

@dataclass
class Req:
    prompt: str
    prompt_ids: list[int]
    output_tokens: int


def pydoc_ids(tokenizer) -> list[int]:
    from pydoc_data.topics import topics

    return tokenizer.encode("\n\n".join(topics[k] for k in sorted(topics)), add_bos=False)


def make_requests(tokenizer, workload: str, n: int, prompt_tokens: int, output_tokens: int, range_ratio: float,
                  shared_share: float, seed: int) -> list[Req]:
    """`n` requests of one workload; prompts are text whose encoding is `prompt_tokens` ids or close."""
    rng = random.Random(seed)
    lo, hi = max(1, round(output_tokens * (1 - range_ratio))), max(1, round(output_tokens * (1 + range_ratio)))
    if workload == "random":
        vocab = [i for i in range(tokenizer.vocab_size) if tokenizer.id_to_token(i) and not _special(tokenizer, i)]
        ids = [[rng.choice(vocab) for _ in range(prompt_tokens)] for _ in range(n)]
    elif workload == "shared-prefix":
        text = pydoc_ids(tokenizer)
        shared = round(prompt_tokens * shared_share)
        prefix = text[:shared]
        starts = rng.sample(range(shared, len(text) - prompt_tokens), n)
        ids = [prefix + text[s:s + prompt_tokens - shared] for s in starts]
    else:
        raise SystemExit(f"unknown workload {workload!r} (random, shared-prefix)")
    reqs = []
    for row in ids:
        prompt = tokenizer.decode(row)
        reqs.append(Req(prompt, tokenizer.encode(prompt), rng.randint(lo, hi)))
    return reqs


def _special(tokenizer, i: int) -> bool:
    return i in tokenizer.eos_token_ids or tokenizer.id_to_token(i).startswith("<|")


# -- the streaming client ---------------------------------------------------------------------------

@dataclass
class Result:
    ok: bool
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    tpot: float | None = None
    e2e: float = 0.0
    error: str | None = None
    cut: bool = False  # the client disconnected on purpose (soak)


async def stream_completion(client, url: str, req: Req, extra: dict, cut_after: int | None = None) -> Result:
    """POST /v1/completions with stream=True; time every chunk (an event with choices)."""
    body = {"model": MODEL_ID, "prompt": req.prompt, "max_tokens": req.output_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, **extra}
    chunks, usage, texts = [], None, 0
    start = time.perf_counter()
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                return Result(False, error=f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    return Result(False, error=str(event["error"])[:200])
                if event.get("choices"):
                    chunks.append(time.perf_counter())
                    texts += bool(event["choices"][0].get("text"))
                    if cut_after is not None and len(chunks) >= cut_after:
                        return Result(True, output_tokens=len(chunks), cut=True)
                if event.get("usage"):
                    usage = event["usage"]
    except Exception as err:  # a failed request is counted, not fatal
        return Result(False, error=f"{type(err).__name__}: {err}"[:200])
    # a server that sends no usage (llama.cpp's) streams one token per chunk with text
    n = usage["completion_tokens"] if usage else texts
    lat = request_latency(start, chunks, n)
    cached = ((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0) if usage else 0
    return Result(bool(chunks), n, usage["prompt_tokens"] if usage else len(req.prompt_ids), cached,
                  lat.ttft, lat.itl, lat.tpot, lat.e2e, None if chunks else "no chunk received")


async def run_load(url: str, reqs: list[Req], concurrency: int, extra) -> tuple[list[Result], float]:
    """Send every request, at most `concurrency` in flight; returns results and wall time. `extra`:
    fields added to every body, or a function of the request giving them."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        async def one(r):
            async with sem:
                return await stream_completion(client, url, r, extra(r) if callable(extra) else extra)

        start = time.perf_counter()
        results = await asyncio.gather(*(one(r) for r in reqs))
        return list(results), time.perf_counter() - start


def summarize(results: list[Result], wall: float, ttft_slo: float, tpot_slo: float) -> dict:
    ok = [r for r in results if r.ok]
    ms = lambda xs, f: round(1000 * f(xs), 2) if xs else None  # noqa: E731
    p99 = lambda xs: statistics.quantiles(xs, n=100, method="inclusive")[98] if len(xs) > 1 else xs[0]  # noqa: E731
    ttft = [r.ttft for r in ok if r.ttft is not None]
    tpot = [r.tpot for r in ok if r.tpot is not None]
    itl = [g for r in ok for g in r.itl]
    e2e = [r.e2e for r in ok]
    good = [r for r in ok if r.ttft is not None and r.ttft <= ttft_slo and (r.tpot is None or r.tpot <= tpot_slo)]
    out_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    return {
        "completed": len(ok), "failed": len(results) - len(ok), "wall_s": round(wall, 2),
        "req_s": len(ok) / wall, "out_tok_s": out_tokens / wall, "goodput_req_s": len(good) / wall,
        "ttft_mean_ms": ms(ttft, statistics.fmean), "ttft_p50_ms": ms(ttft, statistics.median),
        "ttft_p99_ms": ms(ttft, p99), "tpot_mean_ms": ms(tpot, statistics.fmean),
        "tpot_p50_ms": ms(tpot, statistics.median), "tpot_p99_ms": ms(tpot, p99),
        "itl_mean_ms": ms(itl, statistics.fmean), "itl_p50_ms": ms(itl, statistics.median), "itl_p99_ms": ms(itl, p99),
        "e2e_mean_ms": ms(e2e, statistics.fmean), "e2e_p50_ms": ms(e2e, statistics.median),
        "output_tokens": out_tokens, "prompt_tokens": prompt_tokens,
        "cached_share": sum(r.cached_tokens for r in ok) / prompt_tokens if prompt_tokens else None,
        "errors": sorted({r.error for r in results if r.error})[:3],
    }


# -- servers ------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess on 127.0.0.1 with its log in a temporary file."""

    def __init__(self, name: str, argv: list[str], port: int, env: dict | None = None):
        self.name, self.port, self.url = name, port, f"http://127.0.0.1:{port}"
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_serve_{name}_{port}.log"
        self._log_file = open(self.log, "w")
        self.proc = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait_ready(self, path: str, timeout: float = 300.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log {self.log}:\n"
                                   + self.log.read_text()[-2000:])
            try:
                if httpx.get(self.url + path, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; log {self.log}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


def start_hybridlm(args, scheduling: str, extra: list[str] = ()) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "hybridlm", "serve", args.model, "--port", str(port), "--threads",
            str(args.threads), "--scheduling", scheduling, "--served-model-name", MODEL_ID,
            "--kv-memory", args.kv_memory, "--max-num-seqs", str(args.max_num_seqs), *extra]
    return Server(f"hybridlm-{scheduling}", argv, port)


def start_llama_cpp(args, gguf: Path) -> Server | None:
    from .llama_peer import find_llama_python

    python = args.llama_python or find_llama_python()
    if not (python and Path(python).exists()) or subprocess.run(
            [python, "-c", "import llama_cpp.server"], capture_output=True).returncode != 0:
        progress(f"llama.cpp: {python} cannot import llama_cpp.server: skipping that row")
        return None
    port = free_port()
    n_ctx = args.prompt_tokens + round(args.output_tokens * (1 + args.range_ratio)) + 64
    argv = [python, "-m", "llama_cpp.server", "--model", str(gguf), "--n_threads", str(args.threads),
            "--n_threads_batch", str(args.threads), "--n_ctx", str(n_ctx), "--host", "127.0.0.1",
            "--port", str(port), "--model_alias", MODEL_ID,
            "--interrupt_requests", "False"]  # its default cuts a stream off when the next request arrives
    return Server("llama.cpp", argv, port)


# Request fields that make each server generate exactly max_tokens: hybridlm ignores EOS; llama.cpp's
# server has no ignore_eos but holds EOS back until min_tokens (per request, see _one_point).
HYBRIDLM_EXTRA = {"ignore_eos": True}


# -- transformers, sequential -------------------------------------------------------------------------

class _Clock:
    """A transformers streamer that only timestamps tokens (the first put() is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def bench_transformers(gguf: Path, reqs: list[Req], threads: int) -> tuple[list[Result], float]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    results = []
    with torch.inference_mode():
        model.generate(torch.tensor([reqs[0].prompt_ids[:16]]), max_new_tokens=2, do_sample=False,
                       pad_token_id=0)  # warm-up
        wall_start = time.perf_counter()
        for r in reqs:
            clock = _Clock()
            start = time.perf_counter()
            out = model.generate(torch.tensor([r.prompt_ids]), max_new_tokens=r.output_tokens,
                                 min_new_tokens=r.output_tokens, do_sample=False, pad_token_id=0, streamer=clock)
            n = out.shape[1] - len(r.prompt_ids)
            lat = request_latency(start, clock.times, n)
            results.append(Result(True, n, len(r.prompt_ids), 0, lat.ttft, lat.itl, lat.tpot, lat.e2e))
        wall = time.perf_counter() - wall_start
    del model
    return results, wall


# -- main benchmark -------------------------------------------------------------------------------------

async def _warm_up(url: str, tokenizer, extra: dict) -> None:
    warm = Req("Hello, world. " * 8, tokenizer.encode("Hello, world. " * 8), 4)
    results, _ = await run_load(url, [warm, warm], 2, extra)
    if not all(r.ok for r in results):
        raise RuntimeError(f"warm-up failed on {url}: {[r.error for r in results]}")


def requests_for(concurrency: int, args) -> int:
    return max(args.min_requests, args.requests_per_stream * concurrency)


def run_benchmark(args, tokenizer, gguf: Path) -> dict:
    engines = [e for e in args.engines.split(",") if e]
    levels = [int(c) for c in args.concurrency.split(",") if c]
    workloads = [w for w in args.workloads.split(",") if w]
    servers: dict[str, Server] = {}
    notes = []
    try:
        for name in engines:
            if name in ("continuous", "static"):
                servers[name] = start_hybridlm(args, name)
            elif name == "llama.cpp":
                s = start_llama_cpp(args, gguf)
                if s is None:
                    notes.append("llama.cpp skipped: no Python with llama_cpp.server found")
                else:
                    servers[name] = s
            elif name != "transformers":
                raise SystemExit(f"unknown engine {name!r}")
        for name, s in servers.items():
            progress(f"waiting for {name} on {s.url}")
            s.wait_ready("/v1/models")
            asyncio.run(_warm_up(s.url, tokenizer, {} if name == "llama.cpp" else HYBRIDLM_EXTRA))
        rows = []
        for wi, workload in enumerate(workloads):
            for li, c in enumerate(levels):
                # fresh prompts at each level, so one level's prompts are not in the cache at the next
                # (the shared-prefix workload shares its prefix across levels, as its users would)
                subset = make_requests(tokenizer, workload, requests_for(c, args), args.prompt_tokens,
                                       args.output_tokens, args.range_ratio, args.shared_share,
                                       args.seed + 1000 * wi + li)
                order = list(servers)
                if c % 2:  # alternate who goes first, so drift in machine load does not favour one engine
                    order.reverse()
                for name in order:
                    progress(f"{workload} c={c}: {name} ({len(subset)} requests)")
                    rows.append(_one_point(servers[name], name, workload, c, subset, args))
            if "transformers" in engines:
                subset = make_requests(tokenizer, workload, args.seq_requests, args.prompt_tokens, args.output_tokens,
                                       args.range_ratio, args.shared_share, args.seed + 1000 * wi + 999)
                progress(f"{workload}: transformers sequential ({len(subset)} requests)")
                results, wall = bench_transformers(gguf, subset, args.threads)
                rows.append({"engine": "transformers-seq", "workload": workload, "concurrency": 1,
                             **summarize(results, wall, args.ttft_slo, args.tpot_slo)})
        return {"rows": rows, "notes": notes}
    finally:
        for s in servers.values():
            s.stop()


def _one_point(server: Server, name: str, workload: str, c: int, reqs: list[Req], args) -> dict:
    extra = (lambda r: {"min_tokens": r.output_tokens}) if name == "llama.cpp" else HYBRIDLM_EXTRA
    results, wall = asyncio.run(run_load(server.url, reqs, c, extra))
    return {"engine": name, "workload": workload, "concurrency": c,
            **summarize(results, wall, args.ttft_slo, args.tpot_slo)}


def ratios(rows: list[dict]) -> dict:
    """The goal figures: continuous vs sequential / static / llama.cpp, and the shared-prefix TTFT drop."""
    at = {(r["engine"], r["workload"], r["concurrency"]): r for r in rows}
    out = {}
    for wl in {r["workload"] for r in rows}:
        seq = at.get(("transformers-seq", wl, 1))
        for c in sorted({r["concurrency"] for r in rows if r["workload"] == wl}):
            cont = at.get(("continuous", wl, c))
            if not cont:
                continue
            for peer, key in (("static", "vs_static"), ("llama.cpp", "vs_llama_cpp")):
                if (p := at.get((peer, wl, c))) and p["out_tok_s"]:
                    out[f"{wl}/c{c}/{key}"] = cont["out_tok_s"] / p["out_tok_s"]
            if seq and seq["out_tok_s"]:
                out[f"{wl}/c{c}/vs_transformers_seq"] = cont["out_tok_s"] / seq["out_tok_s"]
    for c in sorted({r["concurrency"] for r in rows}):
        shared, rand = at.get(("continuous", "shared-prefix", c)), at.get(("continuous", "random", c))
        if shared and rand and rand["ttft_mean_ms"] and shared["cached_share"] is not None:
            out[f"shared_prefix/c{c}/ttft_ratio"] = shared["ttft_mean_ms"] / rand["ttft_mean_ms"]
            out[f"shared_prefix/c{c}/uncached_share"] = 1 - shared["cached_share"]
    return out


# -- soak -----------------------------------------------------------------------------------------------

def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def scrape(url: str) -> dict[str, float]:
    """Unlabelled samples of /metrics, by name."""
    import httpx

    values = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def soak(args, tokenizer) -> dict:
    server = start_hybridlm(args, "continuous")
    try:
        server.wait_ready("/v1/models")
        pool = make_requests(tokenizer, "shared-prefix", 256, args.prompt_tokens, args.output_tokens,
                             args.range_ratio, args.shared_share, args.seed) + \
            make_requests(tokenizer, "random", 256, args.prompt_tokens, args.output_tokens, args.range_ratio,
                          args.shared_share, args.seed + 1)
        result = asyncio.run(_soak_clients(server, pool, args))
        deadline = time.monotonic() + 60
        while True:  # the engine finishes aborts on its next step; give it a moment
            m = scrape(server.url)
            idle = m.get("hybridlm_num_requests_running", 1) == 0 and m.get("hybridlm_num_requests_waiting", 1) == 0
            if (idle and m.get("hybridlm_kv_blocks_used", 1) == 0) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        result.update({"running_after": m.get("hybridlm_num_requests_running"),
                       "waiting_after": m.get("hybridlm_num_requests_waiting"),
                       "kv_blocks_used_after": m.get("hybridlm_kv_blocks_used"),
                       "rss_end_mib": rss_mib(server.proc.pid)})
        result["rss_growth_mib"] = result["rss_end_mib"] - result["rss_warm_mib"]
        return result
    finally:
        result_code = server.stop()
        progress(f"soak server exited with {result_code}")


async def _soak_clients(server: Server, pool: list[Req], args) -> dict:
    import httpx

    rng = random.Random(args.seed)
    counts = {"sent": 0, "completed": 0, "cut": 0, "failed": 0}
    errors: set[str] = set()
    rss_samples: list[tuple[float, float]] = []
    start = time.monotonic()
    stop_at = start + args.soak

    async def client_loop(client):
        while time.monotonic() < stop_at:
            req = rng.choice(pool)
            cut = rng.randint(1, max(1, req.output_tokens - 1)) if rng.random() < args.disconnect_prob else None
            counts["sent"] += 1
            res = await stream_completion(client, server.url, req, {"ignore_eos": True}, cut_after=cut)
            if not res.ok:
                counts["failed"] += 1
                errors.add(res.error or "?")
            elif res.cut:
                counts["cut"] += 1
            else:
                counts["completed"] += 1

    async def sample_rss():
        while time.monotonic() < stop_at:
            rss_samples.append((time.monotonic() - start, rss_mib(server.proc.pid)))
            await asyncio.sleep(2.0)

    limits = httpx.Limits(max_connections=args.soak_streams + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        await asyncio.gather(sample_rss(), *(client_loop(client) for _ in range(args.soak_streams)))
    warm = [m for t, m in rss_samples if t >= args.soak * 0.25] or [m for _, m in rss_samples]
    return {"seconds": args.soak, "streams": args.soak_streams, **counts, "errors": sorted(errors)[:5],
            "ended": counts["completed"] + counts["cut"] + counts["failed"] == counts["sent"],
            "rss_warm_mib": warm[0], "rss_max_after_warm_mib": max(warm),
            "rss_samples": [(round(t, 1), round(m, 1)) for t, m in rss_samples]}


# -- entry point ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="registry name or .gguf path (llama.cpp needs a GGUF)")
    ap.add_argument("--engines", default="continuous,static,transformers,llama.cpp")
    ap.add_argument("--workloads", default="random,shared-prefix")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--requests-per-stream", type=int, default=2, help="requests per concurrency level = this x c")
    ap.add_argument("--min-requests", type=int, default=8)
    ap.add_argument("--seq-requests", type=int, default=8, help="requests transformers runs, one after another")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--range-ratio", type=float, default=0.5, help="output lengths in [1-r, 1+r] x --output-tokens")
    ap.add_argument("--shared-share", type=float, default=0.75, help="shared-prefix: share of the prompt shared")
    ap.add_argument("--ttft-slo", type=float, default=2.0, help="seconds")
    ap.add_argument("--tpot-slo", type=float, default=0.25, help="seconds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-memory", default="512M")
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--llama-python", default=None,
                    help="a Python with llama-cpp-python[server] (default: as bench/llama_peer.py finds one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--soak", type=float, default=0, help="seconds of soak instead of the benchmark")
    ap.add_argument("--soak-streams", type=int, default=64)
    ap.add_argument("--disconnect-prob", type=float, default=0.25)
    args = ap.parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM unwinds through the finally blocks that stop the servers this script started (a
    # background job ignores SIGINT, so SIGTERM is how one stops it)
    previous = signal.signal(signal.SIGTERM, _exit_on_signal) if main_thread else None
    try:
        _run(args)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(args) -> None:
    from hybridlm.checkpoints.gguf import read_gguf_tokenizer
    from hybridlm.checkpoints.registry import resolve_gguf

    gguf = resolve_gguf(args.model)
    tokenizer = read_gguf_tokenizer(gguf)
    env = {**environment(), "cpu_model": cpu_model(), "model": args.model, "threads": args.threads}
    config = {k: v for k, v in vars(args).items()}
    if args.soak:
        result = soak(args, tokenizer)
        print_table([result], ["seconds", "streams", "sent", "completed", "cut", "failed", "ended",
                               "kv_blocks_used_after", "rss_warm_mib",
                               "rss_max_after_warm_mib", "rss_end_mib", "rss_growth_mib"])
        emit_json({"bench": "serve-soak", **env, "config": config, "soak": result})
        return
    report = run_benchmark(args, tokenizer, gguf)
    rows = report["rows"]
    print_table(rows, ["engine", "workload", "concurrency", "completed", "failed", "req_s", "out_tok_s",
                       "goodput_req_s", "ttft_mean_ms", "ttft_p99_ms", "tpot_mean_ms", "itl_p50_ms", "e2e_mean_ms",
                       "cached_share"])
    ratio = ratios(rows)
    for k, v in sorted(ratio.items()):
        print(f"{k}: {v:.2f}")
    for note in report["notes"]:
        print("note:", note)
    emit_json({"bench": "serve", **env, "config": config, "results": rows, "ratios": ratio, "notes": report["notes"]})


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def cpu_model() -> str | None:
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return None


if __name__ == "__main__":
    main()
