"""What pruning SmolLM2 buys and costs: parameters, held-out perplexity and decode speed of each
pruned model against the original, in one process.

    python -m bench.prune [--model smollm2-135m] [--variants original,2:4,channels25,heads33,layers2]
                          [--ppl-tokens 4096] [--prompt-tokens 64] [--new-tokens 64] [--runs 3]
                          [--threads 2] [--calib-tokens 4096] [--recover-steps 0]

Variants: magnitude50 (50% of every linear's weights, by |W|), 2:4 (by |W|), channels25 (25% of the
MLP channels, Wanda-style activation importance), heads33 (a third of the query heads of every KV
group), layers2 (the 2 layers with the lowest block influence). Masks keep the dense shape, so their
decode speed is the original's (hybridlm has no sparse kernels); structured variants are smaller
models. Perplexity: eval.perplexity on the held-out pydoc slice (never in the calibration data).
Decode: greedy, past EOS, --prompt-tokens of pydoc then --new-tokens, median of --runs.
Progress on stderr; a table, then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from .common import emit_json, environment, median, print_table, progress

VARIANTS = {
    "magnitude50": dict(method="magnitude", amount=0.5),
    "2:4": dict(method="2:4"),
    "channels25": dict(method="channels", amount=0.25),
    "heads33": dict(method="heads", amount=1 / 3),
    "layers2": dict(method="layers", amount=2 / 30),
}


def decode_speed(model, prompt: list[int], new_tokens: int, runs: int) -> float:
    from hybridlm.generation.generate import generate
    from hybridlm.generation.sampling import SamplingConfig

    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    generate(model, [prompt[:16]], sampling.replace(max_new_tokens=4), cache_kind="static")  # warm-up
    return median([generate(model, [prompt], sampling, cache_kind="static").stats.decode_tokens_per_s
                   for _ in range(runs)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--variants", default="original,2:4,channels25,heads33,layers2",
                    help=f"comma-separated: original, {', '.join(VARIANTS)}")
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--recover-steps", type=int, default=0)
    args = ap.parse_args(argv)

    from hybridlm.checkpoints.registry import load_model
    from hybridlm.compress import build_calibration, heldout_text
    from hybridlm.compress.prune import PruneConfig, prune_model
    from hybridlm.eval.perplexity import perplexity
    from hybridlm.nn.packed_linear import pack_linears

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, dtype=torch.float32)
    base, tok = loaded.model.eval(), loaded.tokenizer
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS) - {"original"})
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: original, {', '.join(VARIANTS)}")
    heldout = tok.encode(heldout_text())[:args.ppl_tokens]
    prompt = tok.encode(heldout_text()[-20_000:])[:args.prompt_tokens]
    calib = build_calibration(tok, None, args.calib_tokens, 256)
    rows = []
    for name in names:
        progress(f"{name}: pruning")
        start = time.perf_counter()
        if name == "original":  # a copy: packing (below) rewrites the linears, and base must stay prunable
            model, summary = copy.deepcopy(base), None
        else:
            cfg = PruneConfig(**VARIANTS[name], recover_steps=args.recover_steps)
            model, summary = prune_model(copy.deepcopy(base), cfg, calib)
        prune_s = time.perf_counter() - start
        model.eval()
        progress(f"{name}: perplexity")
        ppl = perplexity(model, heldout, args.window).perplexity
        pack_linears(model, "auto")  # as `generate` runs it
        progress(f"{name}: decoding")
        tok_s = decode_speed(model, prompt, args.new_tokens, args.runs)
        params = sum(p.numel() for p in model.parameters())
        nonzero = sum(int((p != 0).sum()) for p in model.parameters())
        rows.append({"variant": name, "params_M": params / 1e6, "nonzero_M": nonzero / 1e6,
                     "shape": "" if summary is None else " ".join(f"{k} {a}->{b}" for k, (a, b) in
                                                                  ((k, v) for k, v in summary.shape.items() if isinstance(v, list))),
                     "ppl": ppl, "decode_tok_s": tok_s, "prune_s": prune_s})
        del model
    ref = rows[0] if rows and rows[0]["variant"] == "original" else None
    for r in rows:
        r["speedup"] = r["decode_tok_s"] / ref["decode_tok_s"] if ref else None
    print_table(rows, ["variant", "params_M", "nonzero_M", "shape", "ppl", "decode_tok_s", "speedup", "prune_s"])
    emit_json({"bench": "prune", **environment(), "model": args.model, "ppl_tokens": len(heldout),
               "prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "runs": args.runs,
               "calib_tokens": calib.n_tokens, "recover_steps": args.recover_steps, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
