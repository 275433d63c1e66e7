"""`hybridlm compare`: two (or more) models measured side by side on this machine, with the
analysis model's predictions beside the measurements.

For each context length N and each model (random weights: speed and memory do not depend on the
values): a static cache of N + 1 + d slots, a prefill of N random tokens in chunks (timed), one
untimed decode step, then d timed decode steps (median per token). The cache bytes are read from
the cache tensors afterwards. Models are interleaved context by context so that a change in the
machine's load hits both alike.

Beside each measurement: the predicted cache bytes (analysis/memory.py) and a roofline floor
for a decode step, max(bytes read / memory bandwidth, FLOPs / matmul FLOP rate), with the
bandwidth and the FLOP rate measured on this machine before the run. A measured step above its
floor by a constant is per-step overhead (Python, op dispatch); one that rises faster than the
floor as context grows is a slow path.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from ..config import ModelConfig
from .flops import causal_attention_flops, forward_flops
from .memory import cache_bytes, dtype_bytes
from .summary import analyze


@dataclass
class CompareConfig:
    models: tuple[str, ...]  # presets, or anything checkpoints.registry.describe_source accepts (config only)
    contexts: tuple[int, ...] = (1024, 4096, 16384)  # tokens prefilled before decoding
    decode_tokens: int = 8  # timed decode steps per context (after one untimed step)
    prefill_chunk: int = 2048  # tokens per prefill forward (activations stay bounded at long contexts)
    batch: int = 1  # sequences decoded together
    linear: str = "auto"  # nn.packed_linear impl: "auto" | "packed" | "ref"
    threads: int | None = 1  # torch CPU threads; None = torch's choice. One by default: on a 2-core
    #   machine shared with other work, a second thread that the OS deschedules stalls every op
    #   (decode steps measured up to 30x slower, and erratic); one thread gives steady latencies
    seed: int = 0  # weights and token ids


@dataclass
class Point:
    """One model at one context length: measured and predicted."""

    model: str
    context: int  # tokens prefilled
    prefill_s: float  # wall time of the prefill (all chunks)
    decode_ms: float  # median wall time of one decode step
    decode_ms_min: float  # fastest decode step (what the machine can do when no other load interferes)
    cache_bytes: int  # measured: bytes of the cache tensors after context + 1 + decode_tokens tokens
    cache_bytes_predicted: int  # analysis.memory.cache_bytes at that length
    decode_flops: int  # predicted FLOPs of one decode step (all rows) at this context
    decode_bytes: int  # predicted bytes one decode step reads (weights + cache)
    decode_ms_floor: float  # roofline floor of a decode step on this machine
    prefill_flops: float  # predicted FLOPs of the prefill (attention over visible keys only)
    prefill_floor_s: float  # prefill_flops / the machine's matmul FLOP rate


@dataclass
class Machine:
    bandwidth: float  # bytes per second, a large tensor read (sum)
    flop_rate: float  # FLOP/s of a float32 matmul
    threads: int


@dataclass
class CompareResult:
    config: CompareConfig
    machine: Machine
    params: dict[str, int]  # total parameters per model
    points: list[Point] = field(default_factory=list)
    cache_curves: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # predicted (context,
    #   cache bytes) between and around the measured contexts, for the plot

    def as_dict(self) -> dict:
        return asdict(self)

    def point(self, model: str, context: int) -> Point:
        return next(p for p in self.points if p.model == model and p.context == context)


def parse_contexts(text: str) -> tuple[int, ...]:
    """'1k,4k,16k,32k' or '1024,4096' -> (1024, 4096, ...); k = 1024."""
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            n = int(item[:-1]) * 1024 if item.endswith("k") else int(item)
        except ValueError:
            raise ValueError(f"bad context length {item!r}; use e.g. 1k,4k,16k or 1024,4096") from None
        if n < 1:
            raise ValueError(f"context lengths must be positive, got {item!r}")
        out.append(n)
    if not out:
        raise ValueError("no context lengths given")
    return tuple(sorted(set(out)))


def measure_machine(seconds: float = 0.5) -> Machine:
    """Memory bandwidth (reading a 256 MiB float32 tensor) and float32 matmul FLOP rate; best of
    several tries, each taking about `seconds` / 4."""
    x = torch.ones(64 * 2**20)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    bandwidth, flop_rate = 0.0, 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or not flop_rate:
        start = time.perf_counter()
        x.sum()
        bandwidth = max(bandwidth, x.numel() * 4 / (time.perf_counter() - start))
        start = time.perf_counter()
        a @ b
        flop_rate = max(flop_rate, 2 * 1024**3 / (time.perf_counter() - start))
    return Machine(bandwidth, flop_rate, torch.get_num_threads())


def _model_config(name: str, longest: int) -> ModelConfig:
    from ..checkpoints.registry import describe_source

    cfg, _ = describe_source(name)
    if longest > cfg.max_seq_len:
        if cfg.position == "learned":
            raise ValueError(f"{name} has learned positions for {cfg.max_seq_len} tokens; {longest} needed")
        cfg = cfg.replace(max_seq_len=longest)  # RoPE, ALiBi and NoPE need no table of that length
    return cfg


def _build(cfg: ModelConfig, linear: str, seed: int):
    from ..models.decoder import Decoder
    from ..nn.packed_linear import pack_linears

    torch.manual_seed(seed)
    model = Decoder(cfg).eval().requires_grad_(False)
    pack_linears(model, linear)
    return model


def measure_point(model, cfg: ModelConfig, context: int, cc: CompareConfig,
                  tick=None) -> tuple[float, list[float], int]:
    """Prefill `context` random tokens in chunks, then decode. Returns (prefill seconds, decode
    step seconds, cache bytes). The static cache is allocated once, so its bytes at the end are its
    peak. tick(n): called with the tokens done, for a progress bar."""
    gen = torch.Generator().manual_seed(cc.seed + context)
    ids = torch.randint(0, cfg.vocab_size, (cc.batch, context), generator=gen)
    with torch.inference_mode():
        cache = model.new_cache(cc.batch, kind="static", max_len=context + 1 + cc.decode_tokens)
        start = time.perf_counter()
        for begin in range(0, context, cc.prefill_chunk):
            logits = model(ids[:, begin:begin + cc.prefill_chunk], cache, last_only=True)
            if tick:
                tick(min(cc.prefill_chunk, context - begin))
        prefill_s = time.perf_counter() - start
        token = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        steps = []
        for i in range(cc.decode_tokens + 1):  # the first step is untimed
            start = time.perf_counter()
            token = model(token, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
            if i:
                steps.append(time.perf_counter() - start)
            if tick:
                tick(1)
        return prefill_s, steps, cache.nbytes()


def _predict(name: str, cfg: ModelConfig, context: int, cc: CompareConfig, machine: Machine,
             prefill_s: float, steps: list[float], measured_bytes: int) -> Point:
    nbytes = dtype_bytes(torch.float32)
    held = context + 1 + cc.decode_tokens
    a = analyze(cfg, context, cc.batch, "float32")
    decode_flops = forward_flops(cfg, 1, context, cc.batch, decode=True).total
    floor = max(a.decode_bytes_per_step / machine.bandwidth, decode_flops / machine.flop_rate)
    prefill = forward_flops(cfg, context, 0, cc.batch, last_only=True)
    prefill.terms["attention"] = cc.batch * causal_attention_flops(cfg, context)
    return Point(model=name, context=context, prefill_s=prefill_s, decode_ms=1e3 * statistics.median(steps),
                 decode_ms_min=1e3 * min(steps), cache_bytes=measured_bytes,
                 cache_bytes_predicted=cache_bytes(cfg, held, cc.batch, nbytes), decode_flops=decode_flops,
                 decode_bytes=a.decode_bytes_per_step, decode_ms_floor=1e3 * floor, prefill_flops=prefill.total,
                 prefill_floor_s=prefill.total / machine.flop_rate)


def run_compare(cc: CompareConfig, progress: bool = True) -> CompareResult:
    """Build every model of `cc`, measure each at each context, and predict beside it. A progress
    bar goes to stderr. Sets torch's thread count to `cc.threads` for the run and restores it."""
    if len(cc.models) < 1 or cc.decode_tokens < 1 or cc.prefill_chunk < 1 or cc.batch < 1:
        raise ValueError("compare needs a model, and decode_tokens, prefill_chunk and batch of at least 1")
    threads = torch.get_num_threads()
    if cc.threads is not None:
        torch.set_num_threads(cc.threads)
    try:
        return _run(cc, progress)
    finally:
        torch.set_num_threads(threads)


def _run(cc: CompareConfig, progress: bool) -> CompareResult:
    from tqdm import tqdm

    longest = max(cc.contexts) + 1 + cc.decode_tokens
    configs = {name: _model_config(name, longest) for name in cc.models}
    models = {name: _build(cfg, cc.linear, cc.seed) for name, cfg in configs.items()}
    machine = measure_machine()
    result = CompareResult(cc, machine, {name: analyze(cfg).params_total for name, cfg in configs.items()})
    lo, hi = min(cc.contexts) / 4, max(cc.contexts)
    grid = sorted({max(1, round(lo * (hi / lo) ** (i / 32))) for i in range(33)})
    result.cache_curves = {name: [(n, cache_bytes(cfg, n + 1 + cc.decode_tokens, cc.batch)) for n in grid]
                           for name, cfg in configs.items()}
    total = len(models) * sum(n + 1 + cc.decode_tokens for n in (64, *cc.contexts))
    with tqdm(total=total, unit="tok", disable=not progress, desc="compare", dynamic_ncols=True) as bar:
        for name, model in models.items():  # warm-up: oneDNN primitives, allocator
            bar.set_description(f"warm-up {name}")
            measure_point(model, configs[name], 64, cc, bar.update)
        for context in cc.contexts:
            for name, model in models.items():
                bar.set_description(f"{name} @ {context}")
                prefill_s, steps, nbytes = measure_point(model, configs[name], context, cc, bar.update)
                result.points.append(_predict(name, configs[name], context, cc, machine, prefill_s, steps, nbytes))
    return result


# -- report ----------------------------------------------------------------------------------------

def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def _ctx(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def markdown_table(result: CompareResult) -> str:
    """The measured table, predictions beside, and the ratios of the first model to each other."""
    cc, m = result.config, result.machine
    lines = [
        "| model | context | prefill s | prefill tok/s | decode ms/token | best | floor | "
        "cache MiB | predicted MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in sorted(result.points, key=lambda p: (cc.models.index(p.model), p.context)):
        tok_s = cc.batch * p.context / p.prefill_s
        lines.append(f"| {p.model} | {_ctx(p.context)} | {p.prefill_s:.2f} | {tok_s:,.0f} | "
                     f"{p.decode_ms:.1f} | {p.decode_ms_min:.1f} | {p.decode_ms_floor:.1f} | {_mib(p.cache_bytes)} | "
                     f"{_mib(p.cache_bytes_predicted)} |")
    base = cc.models[0]
    for other in cc.models[1:]:
        lines += ["", f"| context | cache {base} / {other} | decode time {base} / {other} |", "|---:|---:|---:|"]
        for n in cc.contexts:
            a, b = result.point(base, n), result.point(other, n)
            lines.append(f"| {_ctx(n)} | {a.cache_bytes / b.cache_bytes:.1f}x | {a.decode_ms / b.decode_ms:.2f}x |")
    lines += [
        "",
        f"float32, batch {cc.batch}, {m.threads} thread(s), random weights. Decode: median and best of "
        f"{cc.decode_tokens} steps after prefilling `context` tokens (chunks of {cc.prefill_chunk}); floor: the "
        f"roofline bound of a step, max(bytes read / {m.bandwidth / 1e9:.1f} GB/s, FLOPs / "
        f"{m.flop_rate / 1e9:.0f} GFLOP/s), both rates measured here. Cache: bytes of the cache tensors after "
        f"context + {1 + cc.decode_tokens} tokens; predicted: hybridlm.analysis.memory.cache_bytes.",
        "Parameters: " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in result.params.items()) + ".",
    ]
    return "\n".join(lines)


def write_report(result: CompareResult, out_dir) -> list:
    """compare.md, compare.json and the PNG plots into out_dir (created). Returns the paths."""
    import json
    from pathlib import Path

    from .plots import plot_compare

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(markdown_table(result) + "\n")
    (out / "compare.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return [out / "compare.md", out / "compare.json", *plot_compare(result, out)]
