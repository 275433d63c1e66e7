"""Load time, prefill and decode speed of SmolLM2-135M: hybridlm vs transformers (and llama.cpp).

    python -m bench.decode [--model smollm2-135m] [--prompt-tokens 512] [--new-tokens 128]
                           [--runs 3] [--threads 2] [--peers transformers,llama.cpp] [--dtype float32]
                           [--compile]

Every engine gets the same 512 real tokens (Python's bundled documentation) and decodes 128 new
tokens greedily past EOS. Prefill = time to the first new token; decode = the 127 tokens after
it. transformers runs the GGUF dequantized to the same dtype through `generate`; llama.cpp runs
through llama-cpp-python when it is installed (it is optional and takes ~10 minutes to build).
Medians of --runs runs, in one process, one engine at a time; ratios are each engine / the first
peer that ran (transformers by default), and same_greedy_tokens counts the leading tokens they share.
With --compile a second hybridlm row decodes through `compile_decoder` (plain linears frozen into
inductor's GEMM template instead of packed oneDNN linears; prefill runs eager on a packed copy);
compile_s is the compile and warm-up time, paid once per process.
"""

from __future__ import annotations

import argparse
import time

import torch

from .common import emit_json, environment, median, print_table, progress


def real_text_ids(tokenizer, n_tokens: int) -> list[int]:
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    ids = tokenizer.encode(text)
    if len(ids) < n_tokens:
        raise SystemExit(f"pydoc_data gives only {len(ids)} tokens")
    return ids[:n_tokens]


def bench_hybridlm(model_name, dtype, prompt_ids, new_tokens, runs, linear, compile_step=False):
    from hybridlm.checkpoints.registry import load_model
    from hybridlm.generation.compiled import compile_decoder
    from hybridlm.generation.generate import generate
    from hybridlm.generation.sampling import SamplingConfig
    from hybridlm.nn.packed_linear import pack_linears

    start = time.perf_counter()
    loaded = load_model(model_name, dtype=dtype)
    # bytes of matrices a decode step streams: every linear, the LM head included
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m in loaded.model.modules()
                       if isinstance(m, torch.nn.Linear))
    if compile_step:  # the graph freezes plain linears into its own GEMM kernels: no packing
        model = compile_decoder(loaded.model)
    else:
        model = loaded.model
        pack_linears(model, linear)
    load_s = time.perf_counter() - start
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    prefill, decode, tokens = [], [], None
    progress("hybridlm warm-up" + (": compiling the decode step" if compile_step else ""))
    start = time.perf_counter()
    generate(model, [prompt_ids[:32]], sampling.replace(max_new_tokens=8), cache_kind="static")
    compile_s = time.perf_counter() - start if compile_step else None
    for i in range(runs):
        progress(f"hybridlm run {i + 1}/{runs}")
        res = generate(model, [prompt_ids], sampling, cache_kind="static")
        prefill.append(len(prompt_ids) / res.stats.prefill_s)
        decode.append(res.stats.decode_tokens_per_s)
        tokens = res.tokens[0]
    return {"engine": "hybridlm-compiled" if compile_step else "hybridlm", "load_s": load_s, "compile_s": compile_s,
            "prefill_tok_s": median(prefill), "decode_tok_s": median(decode),
            "weight_gb_s": median(decode) * weight_bytes / 1e9}, tokens


def memory_read_gb_s(threads: int, gib: int = 1) -> float:
    """What this machine reads from memory with `threads` threads: the best of 5 sums over a
    tensor far larger than the caches. The ceiling weight_gb_s is measured against."""
    x = torch.ones(gib * 2**28)
    x.sum()
    best = min(_timed(x.sum) for _ in range(5))
    return x.numel() * x.element_size() / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_transformers(source, dtype, prompt_ids, new_tokens, runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    # the tokenizer is part of what a transformers user loads (and most of its GGUF load time)
    AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=dtype).eval()
    load_s = time.perf_counter() - start
    ids = torch.tensor([prompt_ids])
    kwargs = dict(do_sample=False, eos_token_id=None, pad_token_id=0)

    def timed(n):
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
        return time.perf_counter() - t, out

    with torch.inference_mode():
        timed(2)
        prefill, decode, tokens = [], [], None
        for i in range(runs):
            progress(f"transformers run {i + 1}/{runs}")
            t_first, _ = timed(1)
            t_all, out = timed(new_tokens)
            prefill.append(len(prompt_ids) / t_first)
            decode.append((new_tokens - 1) / max(t_all - t_first, 1e-9))
            tokens = out[0, len(prompt_ids):].tolist()
    return {"engine": "transformers", "load_s": load_s, "prefill_tok_s": median(prefill),
            "decode_tok_s": median(decode)}, tokens


def bench_llama_cpp(source, prompt_ids, new_tokens, runs, threads):
    try:
        from llama_cpp import Llama
    except ImportError:
        progress("llama-cpp-python is not installed: skipping the llama.cpp peer")
        return None, None
    start = time.perf_counter()
    llm = Llama(model_path=str(source), n_ctx=len(prompt_ids) + new_tokens + 8, n_threads=threads,
                n_batch=len(prompt_ids), verbose=False)
    load_s = time.perf_counter() - start
    prefill, decode, tokens = [], [], []
    for i in range(runs):
        progress(f"llama.cpp run {i + 1}/{runs}")
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt_ids)
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
        t_first = time.perf_counter() - t
        tokens = [tok]
        t = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([tok])
            tok = int(llm.scores[llm.n_tokens - 1].argmax())
            tokens.append(tok)
        prefill.append(len(prompt_ids) / t_first)
        decode.append((new_tokens - 1) / (time.perf_counter() - t))
    return {"engine": "llama.cpp", "load_s": load_s, "prefill_tok_s": median(prefill),
            "decode_tok_s": median(decode)}, tokens


def agreement(a: list[int] | None, b: list[int] | None) -> int | None:
    """Leading tokens on which two greedy continuations agree."""
    if a is None or b is None:
        return None
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="registry name or .gguf path")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--linear", default="auto", choices=["auto", "packed", "ref"])
    ap.add_argument("--peers", default="transformers,llama.cpp", help="comma-separated; empty for none")
    ap.add_argument("--compile", action="store_true",
                    help="also run hybridlm with its decode step compiled (compile_decoder; ignores --linear)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]

    from hybridlm.checkpoints.gguf import read_gguf_tokenizer
    from hybridlm.checkpoints.registry import resolve_gguf

    source = resolve_gguf(args.model)
    prompt_ids = real_text_ids(read_gguf_tokenizer(source), args.prompt_tokens)
    rows, outputs = [], {}
    engines = [False, True] if args.compile else [False]  # eager always: compiled is compared to it
    for compile_step in engines:
        row, tokens = bench_hybridlm(args.model, dtype, prompt_ids, args.new_tokens, args.runs, args.linear,
                                     compile_step)
        rows.append(row)
        outputs[row["engine"]] = tokens
    peers = [p for p in args.peers.split(",") if p]
    if "transformers" in peers:
        row, outputs["transformers"] = bench_transformers(source, dtype, prompt_ids, args.new_tokens, args.runs)
        rows.append(row)
    if "llama.cpp" in peers:
        row, outputs["llama.cpp"] = bench_llama_cpp(source, prompt_ids, args.new_tokens, args.runs, args.threads)
        if row:
            rows.append(row)
    # every row against the first peer that ran (transformers by default), else against eager hybridlm
    ref = next((r for r in rows if not r["engine"].startswith("hybridlm")), rows[0])
    for row in rows:
        row["vs"] = ref["engine"]
        row["same_greedy_tokens"] = agreement(outputs[ref["engine"]], outputs[row["engine"]])
        for key in ("prefill_tok_s", "decode_tok_s"):
            row[f"x_{key}"] = row[key] / ref[key]
    read_gb_s = memory_read_gb_s(args.threads)
    print_table(rows, ["engine", "load_s", "compile_s", "prefill_tok_s", "decode_tok_s", "vs", "x_prefill_tok_s",
                       "x_decode_tok_s", "same_greedy_tokens", "weight_gb_s"])
    print(f"memory read bandwidth ({args.threads} threads, sum over 1 GiB): {read_gb_s:.1f} GB/s; weight_gb_s = "
          "decode tok/s x linear weight bytes")
    emit_json({"bench": "decode", **environment(), "model": args.model, "dtype": args.dtype,
               "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "runs": args.runs,
               "linear": args.linear, "compile": args.compile, "memory_read_gb_s": read_gb_s, "results": rows})


if __name__ == "__main__":
    main()
