"""`compress report`: every compression method applied to one model and measured in one run."""

from __future__ import annotations

import platform
import sys


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cmd_report(args) -> int:
    from pathlib import Path

    import torch

    from ..compress.report import DEFAULT_VARIANTS, ReportConfig, markdown_table, run_report, write_report
    from ..kernels import qmatmul

    variants = DEFAULT_VARIANTS if not args.only else tuple(v.strip() for v in args.only.split(",") if v.strip())
    cfg = ReportConfig(model=args.model, variants=variants, eval_tokens=args.eval_tokens, window=args.window,
                       stride=args.stride, calib_tokens=args.calib_tokens, decode_tokens=args.decode_tokens,
                       decode_runs=args.decode_runs)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{out} exists and is not empty (use --overwrite to replace it)")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    rows = run_report(cfg, progress=lambda message: print(f"report: {message}", file=sys.stderr, flush=True))
    header = {"CPU": _cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "native kernels": qmatmul.isa() if qmatmul.available() else "unavailable (reference path)",
              "perplexity": f"{cfg.eval_tokens} held-out tokens of the default corpus, window {cfg.window}, "
                            f"stride {cfg.stride}; quantized layers scored through their decode kernels "
                            "(fast mode: int8 activations)",
              "decode": f"median of {cfg.decode_runs} greedy runs of {cfg.decode_tokens} tokens at batch 1 "
                        f"after a {cfg.prompt_tokens}-token prompt",
              "caveat": "float32 = the model as loaded in float32; for a GGUF source that is its quantized "
                        "weights dequantized, already on that file's grid"}
    write_report(rows, cfg, out, header, overwrite=args.overwrite)
    print(markdown_table(rows))
    print(f"wrote {out / 'report.md'}, {out / 'report.json'}, {out / 'report.png'}", file=sys.stderr)
    return 0


def register(sub) -> None:
    """Add this module's subcommands to the `hybridlm` parser."""
    from ..compress.report import DEFAULT_VARIANTS, VARIANTS

    p = sub.add_parser("compress", help="compression reports (see also `quantize` and `prune`)",
                       description="Compression across methods, measured together.")
    group = p.add_subparsers(dest="compress_command", required=True, metavar="SUBCOMMAND")
    r = group.add_parser(
        "report", help="quantize and prune one model every way, measure bytes, perplexity and decode speed",
        description="Apply every compression method hybridlm has to one model, each from the same float "
                    "weights, and measure in one run on this machine: weight bytes, perplexity on the held-out "
                    "slice of the default corpus (sliding window), and greedy decode tokens/s at batch 1. "
                    "Writes report.md (the table), report.json and report.png (perplexity vs bytes, speed as "
                    "colour) into --out. Takes a few minutes per calibrated method on 2 cores.",
        epilog="variants: " + ", ".join(f"{k} ({VARIANTS[k][0]})" for k in VARIANTS))
    r.add_argument("model", nargs="?", default="smollm2-135m",
                   help="registry name, .gguf file or HF checkpoint directory (default smollm2-135m)")
    r.add_argument("--out", default="compress-report", help="output directory (default ./compress-report)")
    r.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    r.add_argument("--only", default=None, help=f"comma-separated variants (default: all {len(DEFAULT_VARIANTS)})")
    r.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens scored (default 4096)")
    r.add_argument("--window", type=int, default=512, help="perplexity window in tokens (default 512)")
    r.add_argument("--stride", type=int, default=256, help="perplexity stride in tokens (default 256)")
    r.add_argument("--calib-tokens", type=int, default=16384, help="calibration tokens (default 16384)")
    r.add_argument("--decode-tokens", type=int, default=64, help="tokens per decode measurement (default 64)")
    r.add_argument("--decode-runs", type=int, default=3, help="decode measurements per variant (default 3)")
    r.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    r.set_defaults(func=cmd_report)
