"""W8A8 on SmolLM2-135M: perplexity of SmoothQuant vs naive W8A8 vs float, dynamic and static
activation scales.

    python -m bench.w8a8 [--model smollm2-135m] [--eval-tokens 4096] [--window 512] [--stride 512]
                         [--calib-tokens 4096] [--rows float,naive-dynamic,...] [--threads 2]

Perplexity: hybridlm.eval.perplexity on the held-out slice of the default corpus (no calibration
text is read from it); calibration: the rest of the default corpus. The W8A8 layers are scored
through their float32 fake-quant twin (impl "ref": the same int8 codes and scales, summed in
float instead of int32) because torch._int_mm, the int8 x int8 -> int32 path, is not vectorised
on x86 CPUs (about 20x slower than float32 for prefill-sized matmuls). The `int_vs_ref` column
checks the two on the first 64 tokens: max |logit difference| / max |logit|.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from .common import emit_json, environment, print_table, progress

ROWS = {
    "float": None,
    "naive-dynamic": dict(method="w8a8", options={"act": "dynamic"}),
    "naive-static": dict(method="w8a8", options={"act": "static"}),
    "smoothquant-dynamic": dict(method="smoothquant", options={"act": "dynamic", "alpha": 0.5}),
    "smoothquant-static": dict(method="smoothquant", options={"act": "static", "alpha": 0.5}),
    "smoothquant-dynamic-a0.8": dict(method="smoothquant", options={"act": "dynamic", "alpha": 0.8}),
    "smoothquant-static-a0.8": dict(method="smoothquant", options={"act": "static", "alpha": 0.8}),
}


def cpu_model() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), None)


def run_row(name, base, calib, ids, window, stride) -> dict:
    from hybridlm.compress import QuantizeConfig, quantize_model
    from hybridlm.eval.perplexity import perplexity
    from hybridlm.nn.quant.w8a8 import set_w8a8_impl

    row = {"row": name}
    model, spec = base, ROWS[name]
    if spec is not None:
        model = copy.deepcopy(base)
        summary = quantize_model(model, QuantizeConfig(**spec), calib)
        row.update(quantize_s=summary.seconds, bytes_ratio=summary.ratio)
        probe = torch.tensor([ids[:64]])
        with torch.no_grad():
            y_int = model(probe)
            set_w8a8_impl(model, "ref")
            y_ref = model(probe)
        row["int_vs_ref"] = ((y_int - y_ref).abs().max() / y_ref.abs().max()).item()
    start = time.perf_counter()
    row["perplexity"] = perplexity(model, ids, window=window, stride=stride).perplexity
    row["eval_s"] = time.perf_counter() - start
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--stride", type=int, default=512)
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from: {', '.join(ROWS)}")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [r for r in args.rows.split(",") if r]
    unknown = [r for r in names if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")

    from hybridlm.checkpoints.registry import load_model
    from hybridlm.compress.calibration import build_calibration, heldout_text

    loaded = load_model(args.model, dtype=torch.float32)
    loaded.model.eval()
    ids = loaded.tokenizer.encode(heldout_text())[:args.eval_tokens]
    calib = build_calibration(loaded.tokenizer, n_tokens=args.calib_tokens)
    progress(f"eval: {len(ids)} held-out tokens; calibration: {calib.n_tokens} tokens")
    rows = []
    for name in names:
        progress(f"{name} ...")
        rows.append(run_row(name, loaded.model, calib, ids, args.window, args.stride))
        progress(f"{name}: perplexity {rows[-1]['perplexity']:.3f}")
    base = next((r["perplexity"] for r in rows if r["row"] == "float"), None)
    for r in rows:
        r["vs_float"] = None if base is None else r["perplexity"] / base - 1
    shown = [{**r, "vs_float": None if r["vs_float"] is None else f"{r['vs_float']:+.2%}",
              "int_vs_ref": None if "int_vs_ref" not in r else f"{r['int_vs_ref']:.1e}"} for r in rows]
    print_table(shown, ["row", "perplexity", "vs_float", "bytes_ratio", "int_vs_ref", "quantize_s", "eval_s"])
    emit_json({"bench": "w8a8", **environment(), "cpu_model": cpu_model(), "model": args.model,
               "eval_tokens": len(ids), "window": args.window, "stride": args.stride,
               "calibration_tokens": calib.n_tokens, "results": rows})


if __name__ == "__main__":
    main()
