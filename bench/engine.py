"""Offline serving throughput: N requests through the engine vs one at a time through `generate`.

    python -m bench.engine [--model smollm2-135m] [--requests 32] [--concurrency 16]
                           [--prompt-tokens 128] [--new-tokens 64] [--range-ratio 0.5] [--threads 2]
                           [--sequential 4] [--static] [--temperature 0] [--dtype auto] [--quant-act fast]

Every request gets a different slice of real text (Python's bundled documentation) and decodes
past EOS a length drawn uniformly in [1 - r, 1 + r] x --new-tokens (r = --range-ratio, seeded, the
same for every mode), as `vllm bench serve` draws them. Rows:
  sequential  `generate` one request at a time (batch 1, the eager packed-linear path); its tok/s
              is measured on the first --sequential requests (each takes as long as the others);
  continuous  `Engine.generate` over all N requests, at most --concurrency running at once;
  static      the same with static batching (a batch waits for its longest member), if --static.
The model loads as `hybridlm serve` loads it: --dtype auto keeps a GGUF's quantized weights
(QuantLinear, native kernels, --quant-act fast = int8 activations as llama.cpp), float32
dequantizes them and packs the float linears. Every mode runs the same modules.
Output tok/s = generated tokens / wall seconds (prefill included, as a server sees it). The
continuous row's tokens are checked against the sequential ones where both ran (greedy only).
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from .common import emit_json, environment, print_table, progress


def prompts_from_docs(tokenizer, n: int, length: int) -> list[list[int]]:
    from pydoc_data.topics import topics

    ids = tokenizer.encode("\n\n".join(topics[k] for k in sorted(topics)))
    if len(ids) < n * length:
        raise SystemExit(f"pydoc_data gives {len(ids)} tokens, {n * length} needed")
    return [ids[i * length:(i + 1) * length] for i in range(n)]


def output_lengths(n: int, mean: int, ratio: float, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    low, high = max(1, round(mean * (1 - ratio))), max(1, round(mean * (1 + ratio)))
    return [rng.randint(low, high) for _ in range(n)]


def run_sequential(model, prompts, lengths, temperature):
    from hybridlm.generation import SamplingConfig, generate

    start, outs = time.perf_counter(), []
    for p, n in zip(prompts, lengths):
        sampling = SamplingConfig(max_new_tokens=n, temperature=temperature, ignore_eos=True, seed=0)
        outs.append(generate(model, [p], sampling, cache_kind="static").tokens[0])
    return outs, time.perf_counter() - start


def run_engine(model, tokenizer, prompts, lengths, args, scheduling):
    from hybridlm.engine import Engine, EngineConfig, RequestParams

    config = EngineConfig(kv_memory=args.kv_memory, max_num_seqs=args.concurrency, scheduling=scheduling,
                          max_num_batched_tokens=max(args.concurrency, args.budget), long_prefill=args.long_prefill)
    engine = Engine(model, tokenizer, config)
    progress(engine.capacity(args.prompt_tokens + args.new_tokens).describe())
    params = RequestParams(max_tokens=4, temperature=args.temperature, ignore_eos=True, seed=0)
    engine.generate(prompts[:2], params)  # warm-up
    engine.reset_prefix_cache()  # the measured requests must not find the warm-up's prompts cached
    before = engine.metrics()
    start = time.perf_counter()
    outs = engine.generate(prompts, [params.replace(max_tokens=n) for n in lengths])
    seconds = time.perf_counter() - start
    after = engine.metrics()
    return [o.token_ids for o in outs], seconds, after["steps"] - before["steps"], after


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64, help="mean output length")
    ap.add_argument("--range-ratio", type=float, default=0.5, help="output lengths in [1-r, 1+r] x --new-tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sequential", type=int, default=4, help="requests timed one at a time (0 = skip)")
    ap.add_argument("--static", action="store_true", help="also run static batching")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--kv-memory", type=int, default=512 << 20)
    ap.add_argument("--budget", type=int, default=512, help="max_num_batched_tokens")
    ap.add_argument("--long-prefill", type=int, default=256)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32"],
                    help="auto: a GGUF's weights stay quantized (as `hybridlm serve` runs them); float32: dequantized")
    ap.add_argument("--quant-act", default="fast", choices=["fast", "exact"],
                    help="activations of quantized layers: fast = int8 (default), exact = float32")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from hybridlm.checkpoints.registry import load_model
    from hybridlm.nn.packed_linear import pack_linears
    from hybridlm.nn.quant import set_quant_modes

    loaded = load_model(args.model, keep_quantized=args.dtype == "auto")
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    quantized = set_quant_modes(model, act_mode=args.quant_act)
    packed = pack_linears(model, "auto")
    progress(f"{args.model}: {quantized} quantized linears (act {args.quant_act}), {packed} packed float linears")
    prompts = prompts_from_docs(tokenizer, args.requests, args.prompt_tokens)
    lengths = output_lengths(args.requests, args.new_tokens, args.range_ratio)
    rows, seq_tokens = [], None
    total = sum(lengths)
    if args.sequential:
        progress(f"sequential: {args.sequential} requests one at a time")
        run_sequential(model, [prompts[0][:16]], [4], args.temperature)  # warm-up
        seq_tokens, seconds = run_sequential(model, prompts[:args.sequential], lengths, args.temperature)
        rows.append(dict(mode="sequential", requests=args.sequential, seconds=seconds,
                         out_tok_s=sum(lengths[:args.sequential]) / seconds, steps=None))
    modes = ["continuous"] + (["static"] if args.static else [])
    metrics = {}
    for mode in modes:
        progress(f"{mode}: {args.requests} requests, {args.concurrency} at once")
        tokens, seconds, steps, metrics[mode] = run_engine(model, tokenizer, prompts, lengths, args, mode)
        row = dict(mode=mode, requests=args.requests, seconds=seconds, out_tok_s=total / seconds, steps=steps)
        if seq_tokens is not None and args.temperature == 0:
            row["same_tokens"] = sum(a == b for a, b in zip(tokens, seq_tokens))
        rows.append(row)
    base = rows[0]["out_tok_s"]
    for row in rows:
        row["x_sequential"] = row["out_tok_s"] / base if args.sequential else None
    print_table(rows, ["mode", "requests", "seconds", "out_tok_s", "x_sequential", "steps", "same_tokens"])
    emit_json({"bench": "engine", "env": environment(), "config": vars(args), "rows": rows,
               "engine_metrics": metrics.get("continuous")})


if __name__ == "__main__":
    main()
