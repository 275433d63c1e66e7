"""llama.cpp as a peer, through llama-cpp-python, in whatever Python has it installed.

llama-cpp-python usually lives in its own environment (/work/llamavenv here: it builds from source
and pulls its own numpy), so this file imports neither torch nor hybridlm and runs as a script
under that Python; `find_llama_python` (importable from anywhere) says which Python that is, and
`run_peer` calls it. Commands (every result is one JSON object on stdout):

    logits      --model F --ids 1,2,3 --out X.npy       all-position logits (T, V) float32 to X.npy
    perplexity  --model F --ids-file ids.json            total NLL over a window plan (see below)
    quantize    --model F32.gguf --out Q.gguf --type q4_0|q4_1|q8_0   llama.cpp's own quantizer

perplexity reads {"ids": [...], "plan": [[begin, end, first], ...]}: each window ids[begin:end]
is evaluated from an empty cache and the tokens first..end-1 are scored by the logits before them
(hybridlm.eval.perplexity.window_plan makes the plan, so both engines score the same tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_PYTHON = "/work/llamavenv/bin/python"
_FTYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
           "f16": "LLAMA_FTYPE_MOSTLY_F16"}


def find_llama_python() -> str | None:
    """A Python that can `import llama_cpp`: $HYBRIDLM_LLAMA_PYTHON, this one, or /work/llamavenv's."""
    candidates = [os.environ.get("HYBRIDLM_LLAMA_PYTHON"), sys.executable, DEFAULT_PYTHON]
    for python in candidates:
        if not python or not (Path(python).is_file() or shutil.which(python)):
            continue
        ok = subprocess.run([python, "-c", "import llama_cpp"], capture_output=True, check=False)
        if ok.returncode == 0:
            return python
    return None


def run_peer(python: str, *args: str, timeout: float | None = None) -> dict:
    """Run this file under `python` with `args`; its JSON result (RuntimeError with its stderr on failure)."""
    proc = subprocess.run([python, __file__, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"llama.cpp peer failed ({' '.join(map(str, args[:1]))}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- inside the llama-cpp-python environment ---------------------------------------------------------
def _llama(model: str, n_ctx: int, threads: int):
    from llama_cpp import Llama

    # logits_all and n_batch = n_ubatch = n_ctx: one evaluation returns a row of logits per token
    # (with a smaller n_batch, llm.scores keeps only the last batch's rows)
    return Llama(model_path=model, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, n_threads=threads,
                 n_threads_batch=threads, verbose=False)


def _eval_logits(llm, ids: list[int]):
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def cmd_logits(args) -> dict:
    import numpy as np

    ids = [int(i) for i in args.ids.split(",")]
    llm = _llama(args.model, max(len(ids), 8), args.threads)
    logits = _eval_logits(llm, ids)
    np.save(args.out, logits)
    return {"shape": list(logits.shape), "n_vocab": llm.n_vocab()}


def cmd_perplexity(args) -> dict:
    import numpy as np

    spec = json.loads(Path(args.ids_file).read_text())
    ids, plan = spec["ids"], spec["plan"]
    llm = _llama(args.model, max(e - b for b, e, _ in plan), args.threads)
    total, count, start = 0.0, 0, time.perf_counter()
    for b, e, first in plan:
        logits = _eval_logits(llm, ids[b:e]).astype(np.float64)  # (T, V)
        scores = logits[first - 1 - b:e - 1 - b]
        top = scores.max(-1, keepdims=True)
        logz = (top[:, 0] + np.log(np.exp(scores - top).sum(-1)))
        total += float((logz - scores[np.arange(len(scores)), ids[first:e]]).sum())
        count += e - first
    seconds = time.perf_counter() - start
    return {"nll": total, "tokens": count, "perplexity": float(np.exp(total / count)), "seconds": seconds,
            "tokens_per_s": sum(e - b for b, e, _ in plan) / seconds}


def cmd_quantize(args) -> dict:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _FTYPES[args.type])
    params.nthread = args.threads
    start = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(args.model.encode(), args.out.encode(), params)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize returned {rc}")
    return {"out": args.out, "seconds": time.perf_counter() - start, "bytes": os.path.getsize(args.out)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("logits")
    p.add_argument("--model", required=True)
    p.add_argument("--ids", required=True, help="comma-separated token ids")
    p.add_argument("--out", required=True, help=".npy file for the (T, V) float32 logits")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_logits)
    p = sub.add_parser("perplexity")
    p.add_argument("--model", required=True)
    p.add_argument("--ids-file", required=True, help='JSON {"ids": [...], "plan": [[begin, end, first], ...]}')
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_perplexity)
    p = sub.add_parser("quantize")
    p.add_argument("--model", required=True, help="an F32 or F16 GGUF")
    p.add_argument("--out", required=True)
    p.add_argument("--type", required=True, choices=sorted(_FTYPES))
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_quantize)
    args = ap.parse_args(argv)
    print(json.dumps(args.func(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
