"""Perplexity, bytes and quantize time of every post-training quantizer on SmolLM2-135M.

    python -m bench.quantize [--model smollm2-135m] [--eval-tokens 8192] [--window 512] [--stride 256]
                             [--calib-tokens 16384] [--rows float,rtn-w8,...] [--threads 2]
                             [--results FILE]

Perplexity is measured with hybridlm.eval.perplexity on the held-out slice of the default corpus
(every 4th pydoc topic; compress/calibration.py), which no calibration set reads; calibration is
the rest of the default corpus. The first --eval-tokens tokens are scored with a sliding window.

"float" is the GGUF dequantized: SmolLM2's only weights here are its Q4_1 file, so the float model
already sits on an asymmetric 4-bit grid per 32 inputs (RTN asymmetric at group 32 gives it back
exactly). Group 128 does not divide SmolLM2's width (576), so the coarse comparison is at group
192 (and 64). bytes = the quantized linears as stored; model_bytes adds the float32 embedding
(tied to the head, which stays float) and norms. --results appends each row to a JSON Lines file
as it finishes and skips rows already there, so a long run can be resumed.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from .common import emit_json, environment, print_table, progress

# name -> QuantizeConfig fields (None: the float model itself; calibrated=False: no calibration
# data even where the method can use it)
ROWS = {
    "float": None,
    "rtn-w8": dict(method="rtn", bits=8),
    "gptq-w8": dict(method="gptq", bits=8),
    "rtn-w4-g32": dict(method="rtn", bits=4, group_size=32),
    "rtn-w4-g64": dict(method="rtn", bits=4, group_size=64),
    "gptq-w4-g64": dict(method="gptq", bits=4, group_size=64),  # with the clip search (the default)
    "gptq-w4-g64-noclip": dict(method="gptq", bits=4, group_size=64, gptq_clip=False),
    "gptq-w4-g64-actorder": dict(method="gptq", bits=4, group_size=64, act_order=True),
    "gptq-w4-g64-actorder-noclip": dict(method="gptq", bits=4, group_size=64, act_order=True, gptq_clip=False),
    "awq-w4-g64": dict(method="awq", bits=4, group_size=64),
    "awq-w4-g64-noduo": dict(method="awq", bits=4, group_size=64, awq_duo=False),
    "rtn-w4-g192": dict(method="rtn", bits=4, group_size=192),
    "gptq-w4-g192": dict(method="gptq", bits=4, group_size=192),
    "gptq-w4-g192-actorder": dict(method="gptq", bits=4, group_size=192, act_order=True),
    "awq-w4-g192": dict(method="awq", bits=4, group_size=192),
    "rtn-w4-g64-sym": dict(method="rtn", bits=4, group_size=64, symmetric=True),
    "gptq-w4-g64-sym-actorder": dict(method="gptq", bits=4, group_size=64, symmetric=True, act_order=True),
    "nf4-g64": dict(method="nf4", group_size=64),
    "kmeans-row": dict(method="kmeans"),  # weighted by the calibration's E[x^2] per input channel
    "kmeans-row-unweighted": dict(method="kmeans", calibrated=False),
    "fp8-e4m3": dict(method="fp8"),
    "fp4-g32": dict(method="fp4"),
}


def run_row(name, base, tokenizer, calib, eval_ids, n_bytes, window, stride) -> dict:
    from hybridlm.compress import QuantizeConfig, quantize_model
    from hybridlm.eval.perplexity import perplexity

    other = sum(p.numel() * p.element_size() for p in base.parameters())  # float32 parameters, tied once
    spec = ROWS[name]
    row = {"row": name}
    if spec is None:
        model = base
        linear_float = sum(m.weight.numel() * 4 for n, m in base.named_modules()
                           if type(m) is torch.nn.Linear and n != "lm_head")
        row.update(quantize_s=0.0, bytes=linear_float, model_bytes=other)
    else:
        model = copy.deepcopy(base)
        spec = dict(spec)
        use_calib = spec.pop("calibrated", True)
        summary = quantize_model(model, QuantizeConfig(**spec), calib if use_calib else None)
        float_left = sum(p.numel() * p.element_size() for p in model.parameters())
        row.update(method=summary.config.method, bits=summary.config.bits, group=summary.config.group_size,
                   symmetric=summary.config.symmetric, quantize_s=summary.seconds,
                   bytes=summary.quantized_bytes, model_bytes=summary.quantized_bytes + float_left)
    start = time.perf_counter()
    result = perplexity(model, eval_ids, window=window, stride=stride, n_bytes=n_bytes)
    row.update(perplexity=result.perplexity, bits_per_byte=result.bits_per_byte, eval_tokens=result.tokens,
               eval_s=time.perf_counter() - start)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--calib-tokens", type=int, default=16384)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from: {', '.join(ROWS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", default=None, help="JSON Lines file: rows are appended as they finish; "
                                                    "rows already in it are not run again")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [r for r in args.rows.split(",") if r]
    unknown = [r for r in names if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")

    from hybridlm.checkpoints.registry import load_model
    from hybridlm.compress.calibration import build_calibration, heldout_text

    loaded = load_model(args.model, dtype=torch.float32)
    tok = loaded.tokenizer
    ids = tok.encode(heldout_text())[:args.eval_tokens]
    n_bytes = len(tok.decode(ids).encode("utf-8"))
    calib = build_calibration(tok, n_tokens=args.calib_tokens)
    progress(f"eval: {len(ids)} held-out tokens ({n_bytes} bytes); calibration: {calib.n_tokens} tokens")
    done = {}
    results = Path(args.results) if args.results else None
    if results and results.exists():
        done = {r["row"]: r for r in map(json.loads, results.read_text().splitlines()) if r.get("row") in names}
    rows = []
    for name in names:
        if name in done:
            rows.append(done[name])
            continue
        progress(f"{name} ...")
        row = run_row(name, loaded.model, tok, calib, ids, n_bytes, args.window, args.stride)
        progress(f"{name}: perplexity {row['perplexity']:.3f}, quantize {row['quantize_s']:.0f} s, "
                 f"eval {row['eval_s']:.0f} s")
        rows.append(row)
        if results:
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
    base = next((r["perplexity"] for r in rows if r["row"] == "float"), None)
    float_bytes = next((r["bytes"] for r in rows if r["row"] == "float"), None)
    for r in rows:
        r["vs_float"] = None if base is None else r["perplexity"] / base - 1
        r["bytes_ratio"] = None if not float_bytes else r["bytes"] / float_bytes
        r["mib"] = r["bytes"] / 2**20
        r["model_mib"] = r["model_bytes"] / 2**20
    print_table(rows, ["row", "mib", "bytes_ratio", "model_mib", "perplexity", "vs_float", "quantize_s", "eval_s"])
    emit_json({"bench": "quantize", **environment(), "model": args.model, "eval_tokens": len(ids),
               "eval_bytes": n_bytes, "window": args.window, "stride": args.stride,
               "calibration_tokens": calib.n_tokens, "results": rows})


if __name__ == "__main__":
    main()
