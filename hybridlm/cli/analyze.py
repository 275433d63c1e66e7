"""`analyze` and `compare`: a model's costs predicted from its config, and two models measured."""

from __future__ import annotations

import json
import sys

_DTYPES = ["float32", "bfloat16", "float16", "float8"]


def cmd_analyze(args) -> int:
    from ..analysis.summary import analyze, format_analysis
    from ..checkpoints.registry import describe_source

    cfg, source = describe_source(args.model)
    if args.gpus is not None or any(v != 1 for v in (args.tp, args.pp, args.dp)):
        return _parallel(args, cfg, source)
    result = analyze(cfg, args.context, args.batch, args.dtype, args.kv_cache)
    if args.json:
        print(json.dumps({"model": args.model, "source": source, **result.as_dict()}))
    else:
        print(format_analysis(f"{args.model} ({source})", result))
    return 0


def _parallel(args, cfg, source) -> int:
    from ..analysis.parallel import (ParallelSetup, device_memory, fitting_layouts, format_device_memory,
                                     format_fitting, tp_problem)

    seq_len = args.context or cfg.max_seq_len
    name = f"{args.model} ({source})"
    if args.gpus is not None:
        if args.gpu_memory is None or args.gpu_memory <= 0 or args.gpus < 1:
            raise ValueError("--gpus needs a positive --gpu-memory (GB per device)")
        found = fitting_layouts(cfg, args.gpus, args.gpu_memory * 1e9, seq_len, args.batch)
        if args.json:
            print(json.dumps({"model": args.model, "gpus": args.gpus, "gpu_memory_gb": args.gpu_memory,
                              "layouts": [{**vars(s), **m.as_dict()} for s, m in found]}))
        else:
            print(format_fitting(name, args.gpus, args.gpu_memory * 1e9, found))
        return 0
    problem = tp_problem(cfg, args.tp)
    if problem is not None:
        raise ValueError(problem)
    setup = ParallelSetup(tp=args.tp, pp=args.pp, dp=args.dp, zero=args.zero, seq_len=seq_len,
                          micro_batch=args.batch, grad_accum=max(args.pp, 1), param_dtype=args.dtype,
                          act_dtype=args.dtype)
    mem = device_memory(cfg, setup)
    if args.json:
        print(json.dumps({"model": args.model, "source": source, "layout": vars(setup), **mem.as_dict()}))
    else:
        print(format_device_memory(name, setup, mem))
    return 0


def cmd_compare(args) -> int:
    from ..analysis.compare import CompareConfig, markdown_table, parse_contexts, run_compare, write_report

    if args.needle:
        return _compare_needle(args)

    cc = CompareConfig(models=(args.model_a, args.model_b), contexts=parse_contexts(args.contexts),
                       decode_tokens=args.decode_tokens, prefill_chunk=args.prefill_chunk, batch=args.batch,
                       linear=args.linear, threads=args.threads or None, seed=args.seed)
    result = run_compare(cc, progress=not args.no_progress)
    paths = write_report(result, args.out)
    print(markdown_table(result))
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


def _compare_needle(args) -> int:
    """Needle-in-a-haystack accuracy of both models (eval/needle.py), side by side: where
    Transformers and hybrids differ in what they can retrieve, not only in speed."""
    from pathlib import Path

    from ..analysis.compare import parse_contexts
    from ..checkpoints.registry import REGISTRY, resolve
    from ..eval.runner import EvalConfig, markdown_table, run_eval, write_json
    from ..presets import PRESETS

    for name in (args.model_a, args.model_b):
        if name in PRESETS and name not in REGISTRY:
            raise ValueError(f"{name!r} is a preset: random weights and no tokenizer cannot retrieve a needle; "
                             f"train it (hybridlm train), then compare the checkpoints")
        resolve(name)  # a clear error before anything runs
    out = Path(args.out)
    cfg = EvalConfig(task="needle", lengths=parse_contexts(args.contexts), needle_kind=args.needle_kind,
                     trials=args.needle_trials, seed=args.seed, heatmap=str(out / "needle.png"))
    results = run_eval([args.model_a, args.model_b], cfg, show_progress=not args.no_progress)
    write_json(results, out / "needle.json")
    print(markdown_table(results))
    print(f"wrote {out / 'needle.png'}, {out / 'needle.json'}", file=sys.stderr)
    return 0


def register(sub) -> None:
    """Add this module's subcommands to the `hybridlm` parser."""
    p = sub.add_parser(
        "analyze", help="predicted parameters, FLOPs per token and cache bytes of a model or preset",
        description="Predict a model's costs from its config alone (nothing is built or loaded): parameters "
                    "(total, and active per token for MoE), weight bytes, FLOPs per token for prefill and for "
                    "decode at --context (attention's quadratic term, Mamba's SSD scan and conv, the active "
                    "experts), and cache bytes (KV for attention layers, a constant conv + SSM state for "
                    "Mamba layers) per token and at --context x --batch. Tests hold these against the real "
                    "modules, caches and torch's flop counter.")
    p.add_argument("model", help="preset name, registry name, .gguf file or HF checkpoint directory")
    p.add_argument("--context", type=int, default=None, help="tokens per sequence (default: the model's max_seq_len)")
    p.add_argument("--batch", type=int, default=1, help="sequences held in the cache (default 1)")
    p.add_argument("--dtype", default="bfloat16", choices=_DTYPES,
                   help="weights and KV cache; the SSM state stays float32 (default bfloat16)")
    p.add_argument("--kv-cache", default="float", choices=["float", "float16", "int8"],
                   help="K/V storage: float = in --dtype, float16, int8 = int8 with a float32 scale per head and "
                        "token (hybridlm generate --kv-cache) (default float)")
    p.add_argument("--json", action="store_true", help="print one JSON object (params_total, params_active, "
                   "weight_bytes, flops_per_token_prefill, flops_per_token_decode, cache_bytes_per_token, "
                   "cache_bytes_at_context, ...)")
    g = p.add_argument_group(
        "parallel layouts", "per-device weight, gradient, optimizer, activation and cache bytes and the bytes "
        "each device sends per step for a layout (--batch is then the micro-batch per replica, --context the "
        "sequence length); or, with --gpus and --gpu-memory, every layout that fits")
    g.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (heads and channels split; default 1)")
    g.add_argument("--pp", type=int, default=1, help="pipeline stages (contiguous blocks; default 1)")
    g.add_argument("--dp", type=int, default=1, help="data-parallel replicas (default 1)")
    g.add_argument("--zero", default="ddp", choices=["ddp", "zero2", "zero3"],
                   help="what data parallelism shards: nothing (DDP), gradients and optimizer (ZeRO-2), or "
                        "also the weights (ZeRO-3 = FSDP2, hybridlm train --fsdp) (default ddp)")
    g.add_argument("--gpus", type=int, default=None, help="list the layouts of exactly this many devices that fit")
    g.add_argument("--gpu-memory", type=float, default=None, metavar="GB", help="memory of one device, with --gpus")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "compare", help="measure two models' prefill, decode latency and cache memory across context lengths",
        description="Build two models with random weights (float32, CPU) and measure, context by context: "
                    "prefill time, decode latency per token and the bytes of the cache tensors, beside the "
                    "analysis model's predictions. Writes compare.md, compare.json and PNG plots into --out "
                    "and prints the Markdown table. Try: hybridlm compare compare-transformer compare-hybrid.")
    p.add_argument("model_a", help="preset (or registry name, .gguf, HF directory: its config only)")
    p.add_argument("model_b", help="the model to compare it with")
    p.add_argument("--contexts", default="1k,4k,16k",
                   help="comma-separated context lengths, k = 1024 (default 1k,4k,16k)")
    p.add_argument("--decode-tokens", type=int, default=8,
                   help="timed decode steps per context; the median is reported (default 8)")
    p.add_argument("--prefill-chunk", type=int, default=2048, help="tokens per prefill forward (default 2048)")
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    p.add_argument("--out", default="compare-out",
                   help="directory for compare.md, compare.json and the plots (default compare-out)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: steady latencies on a shared machine; 0 = torch's choice)")
    p.add_argument("--linear", default="auto", choices=["auto", "packed", "ref"],
                   help="packed = oneDNN-reordered weights (fast on CPU), ref = nn.Linear (default auto)")
    p.add_argument("--seed", type=int, default=0, help="random weights and token ids (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--needle", action="store_true",
                   help="instead of speed: needle-in-a-haystack accuracy of both models at --contexts, a heatmap "
                        "(needle.png) and needle.json in --out (trained checkpoints: registry names, GGUF, HF dirs)")
    p.add_argument("--needle-kind", default="single", choices=["single", "multikey", "variable"],
                   help="with --needle: the probe (default single)")
    p.add_argument("--needle-trials", type=int, default=1, help="with --needle: probes per cell (default 1)")
    p.set_defaults(func=cmd_compare)
