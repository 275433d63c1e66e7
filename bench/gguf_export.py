"""Do our GPTQ/AWQ Q4 GGUF files beat llama.cpp's own quantizer, measured by llama.cpp itself?

    python -m bench.gguf_export [--model smollm2-135m] [--methods rtn,gptq,awq] [--types q4_0,q4_1]
                                [--max-tokens 8192] [--window 512] [--stride 512] [--threads 2]
                                [--calib-tokens 16384] [--work DIR]

From one set of float weights (for SmolLM2 these are its Q4_1 GGUF dequantized: the only real
weights shipped here, so "float" is already a 4-bit grid and requantizing to Q4_1 reproduces it):
1. our writer stores them as an F32 GGUF;
2. llama.cpp's `llama_model_quantize` turns that file into Q4_0 and Q4_1 (its own rounding, no imatrix);
3. our writer rounds the float weights into Q4_0 / Q4_1 with ggml's rounding (gguf_blocks.py), to
   show it writes what llama.cpp writes (identical tensor bytes are counted);
4. `quantize_model` (what `hybridlm quantize --method M --bits 4 --group-size 32` runs) makes RTN,
   GPTQ and AWQ models, symmetric for Q4_0 and asymmetric for Q4_1, on the default calibration
   corpus, and our writer stores their codes and scales bit for bit;
5. llama.cpp (llama-cpp-python, in its own Python: bench/llama_peer.py) computes the perplexity
   of every file on the same tokens of the held-out pydoc slice (compress.calibration.heldout_text,
   which calibration never reads), windows planned by eval.perplexity.window_plan, and hybridlm
   computes the float model's on the same plan.
Every quantized file keeps the tied embedding in Q8_0 and norms in F32, as llama.cpp's quantizer does
for this model. Progress on stderr; a table, then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .common import emit_json, environment, print_table, progress
from .llama_peer import find_llama_python, run_peer

TYPES = {"q4_0": True, "q4_1": False}  # GGUF type -> symmetric grid


def _identical_bytes(ours: Path, theirs: Path) -> tuple[int, int]:
    """(tensors whose type and bytes are equal, tensors) between two GGUF files."""
    from gguf import GGUFReader

    a = {t.name: t for t in GGUFReader(ours).tensors}
    b = {t.name: t for t in GGUFReader(theirs).tensors}
    same = sum(1 for n in a if n in b and a[n].tensor_type == b[n].tensor_type
               and np.array_equal(np.asarray(a[n].data).view(np.uint8), np.asarray(b[n].data).view(np.uint8)))
    return same, len(a)


def _types(path: Path) -> str:
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for t in GGUFReader(path).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="rtn,gptq,awq", help="comma-separated hybridlm quantizers")
    ap.add_argument("--types", default="q4_0,q4_1", help="comma-separated: q4_0 (symmetric), q4_1 (asymmetric)")
    ap.add_argument("--max-tokens", type=int, default=8192, help="held-out tokens scored")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--stride", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-tokens", type=int, default=16384)
    ap.add_argument("--work", default=None, help="keep the GGUF files here (default: a temporary directory)")
    args = ap.parse_args(argv)

    from hybridlm.checkpoints.gguf_write import write_gguf
    from hybridlm.checkpoints.registry import load_model
    from hybridlm.compress import QuantizeConfig, build_calibration, heldout_text, quantize_model
    from hybridlm.eval.perplexity import perplexity, window_plan

    python = find_llama_python()
    if python is None:
        raise SystemExit("llama-cpp-python is not importable (here, $HYBRIDLM_LLAMA_PYTHON or /work/llamavenv)")
    torch.set_num_threads(args.threads)
    types = [t for t in args.types.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    work_ctx = tempfile.TemporaryDirectory(prefix="gguf-export-") if args.work is None else None
    work = Path(args.work or work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)

    loaded = load_model(args.model, dtype=torch.float32)
    base, tok = loaded.model, loaded.tokenizer
    ids = tok.encode(heldout_text())[:args.max_tokens]
    plan = window_plan(len(ids), args.window, args.stride)
    (work / "ids.json").write_text(json.dumps({"ids": ids, "plan": plan}))
    progress(f"held-out: {len(ids)} tokens in {len(plan)} windows of {args.window}")

    start = time.perf_counter()
    float_ppl = perplexity(base, ids, args.window, args.stride).perplexity
    ours_float_s = time.perf_counter() - start
    files: list[dict] = []

    def add(label, source, path, note=""):
        files.append({"file": label, "source": source, "path": path, "note": note})

    write_gguf(base, tok, work / "f32.gguf", "f32", name=loaded.name, overwrite=True)
    add("f32", "float weights, our writer", work / "f32.gguf")
    for t in types:
        out = work / f"llama_{t}.gguf"
        progress(f"llama.cpp quantizer -> {t}")
        run_peer(python, "quantize", "--model", work / "f32.gguf", "--out", out, "--type", t, "--threads", args.threads)
        add(f"{t} llama.cpp", "llama_model_quantize", out)
        ours = work / f"ggml_{t}.gguf"
        write_gguf(base, tok, ours, t, name=loaded.name, overwrite=True)
        same, total = _identical_bytes(ours, out)
        add(f"{t} ours (ggml rounding)", "our writer", ours, f"{same}/{total} tensors identical to llama.cpp's")
    calib = build_calibration(tok, None, args.calib_tokens) if any(m != "rtn" for m in methods) else None
    for t in types:
        for m in methods:
            progress(f"{m} -> {t}")
            model = copy.deepcopy(base)
            summary = quantize_model(model, QuantizeConfig(m, bits=4, group_size=32, symmetric=TYPES[t]),
                                     None if m == "rtn" else calib)
            out = work / f"{m}_{t}.gguf"
            w = write_gguf(model, tok, out, t, name=f"{loaded.name}-{m}", overwrite=True)
            add(f"{t} {m}", f"hybridlm {m} g32 ({summary.seconds:.0f} s)", out, f"{w.copied_blocks} tensors copied")
            del model

    rows = []
    for f in files:
        progress(f"llama.cpp perplexity: {f['file']}")
        r = run_peer(python, "perplexity", "--model", f["path"], "--ids-file", work / "ids.json", "--threads", args.threads)
        rows.append({"file": f["file"], "source": f["source"], "MiB": Path(f["path"]).stat().st_size / 2**20,
                     "llama_cpp_ppl": r["perplexity"], "vs_float_pct": 100 * (r["perplexity"] / float_ppl - 1),
                     "tok_s": r["tokens_per_s"], "types": _types(Path(f["path"])), "note": f["note"]})
    print_table(rows, ["file", "source", "MiB", "llama_cpp_ppl", "vs_float_pct", "tok_s", "note"])
    print(f"float model through hybridlm on the same windows: ppl {float_ppl:.3f} ({ours_float_s:.0f} s)")
    best = {t: min((r for r in rows if r["file"].startswith(t) and "llama.cpp" in r["file"]),
                   key=lambda r: r["llama_cpp_ppl"], default=None) for t in types}
    verdict = {}
    for t in types:
        ref = best[t]
        for m in methods:
            row = next((r for r in rows if r["file"] == f"{t} {m}"), None)
            if ref and row:
                verdict[f"{t}_{m}_vs_llama_cpp_pct"] = 100 * (row["llama_cpp_ppl"] / ref["llama_cpp_ppl"] - 1)
    emit_json({"bench": "gguf_export", **environment(), "model": args.model, "heldout_tokens": len(ids),
               "window": args.window, "stride": args.stride, "threads": args.threads,
               "calib_tokens": None if calib is None else calib.n_tokens, "float_ppl_hybridlm": float_ppl,
               "rows": [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in r.items()}
                        for r in rows], "verdict": verdict})
    if work_ctx is not None:
        work_ctx.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
