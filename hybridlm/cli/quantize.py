"""`quantize`: post-training quantization of a model's linears into a directory every command loads."""

from __future__ import annotations

import argparse
import json
import sys
import time

_EPILOG = """\
methods (bits, default group size):
  rtn     round to nearest on a uniform grid            4 (g64) or 8 (per channel); no calibration
  gptq    GPTQ, Hessian-weighted error feedback          4 (g64) or 8; calibration; --act-order, --damp,
                                                          --no-gptq-clip
  awq     AWQ, activation-aware scales + clipping        4 (g64) or 8; calibration; --no-awq-clip, --no-awq-duo
  nf4     NF4 table (QLoRA), absmax per group            4 (g64)
  kmeans  k-means 16-entry table per row (or tensor)     4; weighted by calibration if --calib/--calib-tokens
  fp8     FP8 e4m3/e5m2 values, emulated (lut8)          8 (per channel); --fp8-format
  fp4     FP4 e2m1 values, emulated (lut4)               4 (g32)
  smoothquant  W8A8: outliers migrated into the weights  8 (per channel) + int8 activations; calibration;
               --alpha, --act-scales dynamic (per token) | static (calibrated per tensor)
  w8a8    naive W8A8, no smoothing (the baseline)        8 (per channel); --act-scales static needs --calib-tokens

4-bit uniform grids are asymmetric by default (W = s*q + m, llama.cpp Q4_1 at group 32);
--symmetric gives W = s*(q-8) (Q4_0 at group 32); int8 is symmetric (Q8_0 at group 32).
Calibration (gptq, awq): the default corpus (Python's pydoc topics, minus the slice held out for
perplexity, and standard-library sources) or --calib FILE (text, or JSONL with a "text" field).
The LM head stays float unless --include-head. DIR holds quantized.json + model.safetensors +
the tokenizer and loads anywhere a model is accepted: hybridlm generate DIR "...", hybridlm info DIR.
"""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _config(args):
    from ..compress.config import QuantizeConfig, parse_group_size

    return QuantizeConfig(method=args.method, bits=args.bits,
                          group_size=None if args.group_size is None else parse_group_size(args.group_size),
                          symmetric=args.symmetric, act_order=args.act_order, damp=args.damp,
                          gptq_clip=not args.no_gptq_clip,
                          awq_clip=not args.no_awq_clip, awq_duo=not args.no_awq_duo,
                          fp8_format=args.fp8_format, kmeans_per=args.kmeans_per,
                          include_head=args.include_head,
                          options={k: v for k, v in (("alpha", args.alpha), ("act", args.act_scales)) if v is not None})


def cmd_quantize(args) -> int:
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from ..checkpoints.quantized import save_quantized
    from ..checkpoints.registry import load_model
    from ..compress.api import plan, quantize_model, resolve_config
    from ..compress.calibration import build_calibration, read_calibration_file
    from ..compress.config import CompressError

    start = time.perf_counter()
    cfg, method = resolve_config(_config(args))  # bad method/bits/group: fail before loading anything
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise CompressError(f"{out} exists and is not empty (use --overwrite to replace it)")
    if args.calib_tokens is not None and args.calib_tokens < 2:
        raise CompressError(f"--calib-tokens must be at least 2, not {args.calib_tokens}")
    if args.calib is not None:
        read_calibration_file(args.calib)  # missing or empty: say so before the model loads
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, dtype=torch.float32)  # GGUF blocks dequantized: we requantize floats
    plan(loaded.model, cfg)  # already quantized, group sizes: fail before calibrating
    wants_calib = method.calibration == "required" or (
        method.calibration == "optional" and (args.calib is not None or args.calib_tokens is not None))
    calib = None
    if wants_calib:
        calib = build_calibration(loaded.tokenizer, args.calib, args.calib_tokens or 16384, args.calib_seq_len)
        _log(f"calibration: {calib.ids.shape[0]} x {calib.ids.shape[1]} tokens from {calib.source}")

    def progress(items):
        return tqdm(items, desc=f"{cfg.method}", unit="layer", file=sys.stderr, leave=False)

    summary = quantize_model(loaded.model, cfg, calib, progress=progress)
    record = {**summary.config.to_dict(), "source": str(args.model),
              "calibration_tokens": summary.calibration_tokens,
              "calibration_source": None if calib is None else calib.source}
    save_quantized(loaded.model, loaded.tokenizer, out, record, overwrite=args.overwrite)
    result = {"out": str(out), "method": cfg.method, "bits": cfg.bits, "group_size": cfg.group_size,
              "symmetric": cfg.symmetric, "linears": len(summary.linears),
              "quantized_bytes": summary.quantized_bytes, "float32_bytes": summary.float32_bytes,
              "ratio": summary.ratio, "quantize_s": summary.seconds, "total_s": time.perf_counter() - start}
    if args.json:
        print(json.dumps(result))
        return 0
    sym = "" if cfg.symmetric is None else (" symmetric" if cfg.symmetric else " asymmetric")
    print(f"quantized {len(summary.linears)} linears of {args.model} with {cfg.method} ({cfg.bits}-bit{sym}, "
          f"group {cfg.group_size}) in {summary.seconds:.1f} s")
    print(f"linear weights  {summary.quantized_bytes / 2**20:,.2f} MiB, was {summary.float32_bytes / 2**20:,.2f} MiB "
          f"in float32 (x{summary.ratio:.3f}, 1/{1 / summary.ratio:.1f})")
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    """Add `quantize` to the `hybridlm` parser."""
    p = sub.add_parser(
        "quantize", help="quantize a model's linears (RTN, GPTQ, AWQ, NF4, k-means, FP8, FP4) into a directory",
        description="Post-training quantization. Every linear of the model (not the LM head unless "
                    "--include-head) becomes a quantized linear; the result is written atomically to --out "
                    "and loads wherever a model is accepted.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a registry name (e.g. smollm2-135m), a .gguf file or an HF checkpoint directory")
    p.add_argument("--method", required=True, metavar="METHOD",
                   help="rtn, gptq, awq, nf4, kmeans, fp8, fp4, smoothquant, w8a8 (see below) or another "
                        "registered in hybridlm/compress/registry.py")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty unless --overwrite)")
    p.add_argument("--bits", type=int, default=None, help="4 or 8 (default: the method's, see below)")
    p.add_argument("--group-size", default=None,
                   help="inputs sharing one scale: an integer (a multiple of 32 for 4 bits) dividing every "
                        "linear's input width, 'channel' (one per output row) or 'tensor' (default: see below)")
    sym = p.add_mutually_exclusive_group()
    sym.add_argument("--symmetric", dest="symmetric", action="store_true", default=None,
                     help="uniform grids: W = s*(q-8) for 4 bits (default for 8 bits)")
    sym.add_argument("--asymmetric", dest="symmetric", action="store_false",
                     help="uniform grids: W = s*q + m (default for 4 bits; not available for 8)")
    c = p.add_argument_group("calibration (gptq, awq; kmeans when given)")
    c.add_argument("--calib", default=None, metavar="FILE", help="text file, or .jsonl with a \"text\" field per line "
                   "(default: the default corpus minus its held-out slice)")
    c.add_argument("--calib-tokens", type=int, default=None, help="calibration tokens (default 16384)")
    c.add_argument("--calib-seq-len", type=int, default=512, help="tokens per calibration sequence (default 512)")
    m = p.add_argument_group("method options")
    m.add_argument("--act-order", action="store_true",
                   help="gptq: columns in decreasing Hessian-diagonal order (groups keep their original columns)")
    m.add_argument("--damp", type=float, default=0.01, help="gptq: damping, a fraction of the mean Hessian diagonal (default 0.01)")
    m.add_argument("--no-gptq-clip", action="store_true",
                   help="gptq: keep each group's full min-max range (by default the range is shrunk by the clip "
                        "ratio that minimises the Hessian-weighted error, as AWQ's clip search does)")
    m.add_argument("--no-awq-clip", action="store_true", help="awq: skip the per-group clipping search")
    m.add_argument("--no-awq-duo", action="store_true",
                   help="awq: search only s = mean|x|^alpha, not also the duo-scaled s = mean|x|^alpha / mean|w|^(1-alpha)")
    m.add_argument("--fp8-format", default="e4m3", choices=["e4m3", "e5m2"], help="fp8 number format (default e4m3)")
    m.add_argument("--kmeans-per", default="row", choices=["row", "tensor"], help="kmeans: a table per row or per tensor")
    m.add_argument("--include-head", action="store_true", help="quantize the LM head too (the embedding stays float)")
    m.add_argument("--alpha", type=float, default=None,
                   help="smoothquant: migration strength in [0, 1], s = max|X|^alpha / max|W|^(1-alpha) (default 0.5)")
    m.add_argument("--act-scales", default=None, choices=["dynamic", "static"],
                   help="smoothquant, w8a8: int8 activation scales per token at run time (dynamic, default) or "
                        "one per tensor calibrated once (static)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary lines")
    p.set_defaults(func=cmd_quantize)
