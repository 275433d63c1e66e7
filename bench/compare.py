"""The Transformer-vs-hybrid comparison as a benchmark: `hybridlm compare` plus the environment.

    python -m bench.compare [--models compare-transformer,compare-hybrid] [--contexts 1k,4k,16k]
                            [--decode-tokens 8] [--threads 1] [--out bench-compare]

Prints the Markdown table (measured prefill, decode latency per token and cache bytes beside the
analysis model's predictions and roofline floors), writes the plots into --out, and ends with one
JSON line: environment, config, every point and the ratios of the first model to the second.
"""

from __future__ import annotations

import argparse

from hybridlm.analysis.compare import CompareConfig, markdown_table, parse_contexts, run_compare, write_report

from .common import emit_json, environment, progress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="compare-transformer,compare-hybrid", help="comma-separated presets")
    ap.add_argument("--contexts", default="1k,4k,16k", help="comma-separated context lengths (k = 1024)")
    ap.add_argument("--decode-tokens", type=int, default=8, help="timed decode steps per context")
    ap.add_argument("--prefill-chunk", type=int, default=2048, help="tokens per prefill forward")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", default="bench-compare", help="directory for compare.md, compare.json and plots")
    args = ap.parse_args()
    cc = CompareConfig(models=tuple(args.models.split(",")), contexts=parse_contexts(args.contexts),
                       decode_tokens=args.decode_tokens, prefill_chunk=args.prefill_chunk, threads=args.threads)
    result = run_compare(cc)
    paths = write_report(result, args.out)
    progress("wrote " + ", ".join(str(p) for p in paths))
    print(markdown_table(result))
    ratios = {}
    if len(cc.models) > 1:
        a, b = cc.models[:2]
        ratios = {str(n): {"cache": result.point(a, n).cache_bytes / result.point(b, n).cache_bytes,
                           "decode_ms": result.point(a, n).decode_ms / result.point(b, n).decode_ms}
                  for n in cc.contexts}
    # the threads of the run (run_compare restores torch's own setting afterwards)
    emit_json({"benchmark": "compare", **environment(), "torch_threads": result.machine.threads,
               **result.as_dict(), "ratios": ratios})


if __name__ == "__main__":
    main()
