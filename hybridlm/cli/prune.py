"""`prune`: unstructured, 2:4 and structured pruning of a model into a directory every command loads."""

from __future__ import annotations

import argparse
import json
import sys
import time

_EPILOG = """\
methods:
  magnitude  zero the lowest-importance weights (--scope layer: --amount of every linear; global: of all)
  2:4        keep the 2 most important of every 4 consecutive input weights of a row (50%%; no --amount)
  channels   remove --amount of every MLP's hidden channels (rows of gate and up, columns of down)
  heads      remove attention heads keeping GQA valid: --head-unit query removes --amount of the query
             heads of every KV group; group removes --amount of the KV groups with their query heads
             (default: query, or group when every group has one head)
  layers     remove --amount of the layers, those that change the hidden state least (1 - cos(in, out)
             on calibration data, ShortGPT)

importance (default: weight for magnitude and 2:4, activation otherwise):
  weight      |W| (structures: the norms of the weights that carry them in and out)
  activation  |W| x ||X|| on calibration data (Wanda; structures: their activation norm x output weights)
  gradient    |W x dL/dW| on calibration data (first-order Taylor)

Masks keep the model's shape (the zeros are stored); channels, heads and layers give a smaller model.
--recover-steps N fine-tunes N steps with the trainer on the calibration tokens (masks stay applied).
DIR is an HF checkpoint directory (config.json, model.safetensors, tokenizer, pruning.json) that
generate, chat, info, quantize and convert accept.
"""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _config(args):
    from ..compress.prune import PruneConfig

    return PruneConfig(method=args.method, amount=args.amount, scope=args.scope, importance=args.importance,
                       head_unit=args.head_unit, recover_steps=args.recover_steps, recover_lr=args.recover_lr,
                       recover_batch=args.recover_batch)


def _describe(s) -> list[str]:
    c = s.config
    lines = [f"pruned {c.method} ({c.importance} importance"
             + (f", {c.scope} scope" if c.method == "magnitude" else "") + f") in {s.seconds:.1f} s"]
    ratio = s.params_after / s.params_before
    lines.append(f"parameters      {s.params_before:,} -> {s.params_after:,} (x{ratio:.3f}); nonzero "
                 f"{s.nonzero_before:,} -> {s.nonzero_after:,} (x{s.nonzero_after / s.nonzero_before:.3f})")
    if s.sparsity is not None:
        lines.append(f"sparsity        {s.sparsity:.1%} of the weights of {s.shape['linears']} linears are zero")
    for key, (a, b) in ((k, v) for k, v in s.shape.items() if isinstance(v, list)):
        lines.append(f"{key:<16}{a} -> {b}")
    if "layers" in s.removed:
        lines.append(f"removed layers  {s.removed['layers']}")
    if s.recovery is not None:
        r = s.recovery
        lines.append(f"recovery        {r.steps} steps in {r.seconds:.1f} s: calibration loss {r.loss_before:.4f} "
                     f"-> {r.loss_after:.4f}")
    return lines


def cmd_prune(args) -> int:
    from pathlib import Path

    import torch

    from ..checkpoints.registry import load_model
    from ..compress.calibration import build_calibration, read_calibration_file
    from ..compress.prune import PruneError, prune_model, resolve_prune_config, save_pruned
    from ..compress.prune.api import plan

    start = time.perf_counter()
    cfg = resolve_prune_config(_config(args))  # a bad request fails before anything loads
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise PruneError(f"{out} exists and is not empty (use --overwrite to replace it)")
    if args.calib_tokens < 2 or args.calib_seq_len < 2:
        raise PruneError("--calib-tokens and --calib-seq-len must be at least 2")
    if args.calib is not None:
        read_calibration_file(args.calib)  # missing or empty: say so before the model loads
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, dtype=torch.float32)
    plan(loaded.model, cfg)  # zero heads left, a quantized model...: before calibration runs
    calib = None
    if cfg.needs_calibration:
        calib = build_calibration(loaded.tokenizer, args.calib, args.calib_tokens, args.calib_seq_len)
        _log(f"calibration: {calib.ids.shape[0]} x {calib.ids.shape[1]} tokens from {calib.source}")
    model, summary = prune_model(loaded.model, cfg, calib, progress=not args.json)
    save_pruned(model, loaded.tokenizer, out, summary, overwrite=args.overwrite)
    if args.json:
        print(json.dumps({"out": str(out), "total_s": time.perf_counter() - start, **summary.as_dict()}))
        return 0
    for line in _describe(summary):
        print(line)
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    """Add `prune` to the `hybridlm` parser."""
    p = sub.add_parser(
        "prune", help="prune a model: magnitude or 2:4 masks, or remove MLP channels, attention heads or layers",
        description="Prune a model's weights (masks, same shape) or structures (a smaller model), optionally "
                    "recover with a short fine-tuning, and write it atomically to --out.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a registry name (e.g. smollm2-135m), a .gguf file or an HF checkpoint directory")
    p.add_argument("--method", required=True, metavar="{magnitude,2:4,channels,heads,layers}",
                   help="what to prune (see below)")  # checked by PruneConfig: one clear line when unknown
    p.add_argument("--amount", type=float, default=None,
                   help="fraction in (0, 1) of weights / channels / heads / layers to remove (not for 2:4)")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty unless --overwrite)")
    p.add_argument("--scope", default="layer", choices=["layer", "global"],
                   help="magnitude: prune each linear by --amount (layer) or rank all weights together (global)")
    p.add_argument("--importance", default=None, choices=["weight", "activation", "gradient"],
                   help="how to rank what is removed (see below)")
    p.add_argument("--head-unit", default=None, choices=["query", "group"], help="heads: what one removal is")
    c = p.add_argument_group("calibration (activation and gradient importance, recovery)")
    c.add_argument("--calib", default=None, metavar="FILE", help="text file, or .jsonl with a \"text\" field per "
                   "line (default: the default corpus minus its held-out slice)")
    c.add_argument("--calib-tokens", type=int, default=8192, help="calibration tokens (default 8192)")
    c.add_argument("--calib-seq-len", type=int, default=256, help="tokens per calibration sequence (default 256)")
    r = p.add_argument_group("recovery fine-tuning (the trainer, on the calibration tokens)")
    r.add_argument("--recover-steps", type=int, default=0, help="optimizer steps; 0 = no recovery (default)")
    r.add_argument("--recover-lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    r.add_argument("--recover-batch", type=int, default=4, help="sequences per step (default 4)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary lines")
    p.set_defaults(func=cmd_prune)
