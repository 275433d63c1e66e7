"""`train`: pre-train a model on prepared token shards (alone, or on every rank under torchrun).

The options are `TrainConfig`'s fields, built from the dataclass: each field's comment is its help,
so the CLI and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys

# TrainConfig field -> option name, where the flag reads better than the field
_RENAMED = {"data_dir": "--data", "out_dir": "--out", "model_overrides": "--set"}
_REQUIRED = ("preset", "data_dir", "out_dir")


def _field_docs(cls) -> dict[str, str]:
    """field name -> the comment after it in the class source."""
    docs = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^#]*#\s*(.*)$", line)
        if m:
            docs[m.group(1)] = m.group(2).replace("%", "%%")
    return docs


def _override(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE parsed as JSON when it is (numbers, true/false, null), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_config_options(p: argparse.ArgumentParser, skip: tuple[str, ...] = (), defaults: dict | None = None) -> None:
    """One option per TrainConfig field (those in `skip` left out; `defaults` replace the dataclass's)."""
    from ..train.config import CP_ATTENTIONS, PP_SCHEDULES, PRECISIONS, TrainConfig

    docs = _field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = _RENAMED.get(f.name, "--" + f.name.replace("_", "-"))
        help_text = docs.get(f.name, "")
        if f.name == "model_overrides":
            p.add_argument(flag, dest=f.name, action="append", type=_override, default=[], metavar="KEY=VALUE",
                           help=f"{help_text} (repeatable; VALUE as JSON, e.g. --set d_model=256 --set n_layers=4)")
        elif f.type == "bool":
            if f.default:
                p.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", help=f"do not: {help_text}")
            else:
                p.add_argument(flag, dest=f.name, action="store_true", help=help_text)
        else:
            kind = {"int": int, "float": float}.get(f.type.split(" |")[0], str)
            default = None if f.default is dataclasses.MISSING else (defaults or {}).get(f.name, f.default)
            choices = {"precision": PRECISIONS, "pp_schedule": PP_SCHEDULES, "cp_attention": CP_ATTENTIONS}
            extra = {"choices": choices[f.name]} if f.name in choices else {}
            suffix = "" if f.name in _REQUIRED or default is None else f" (default {default})"
            p.add_argument(flag, dest=f.name, type=kind, default=default, required=f.name in _REQUIRED,
                           help=help_text + suffix, **extra)


def cmd_train(args) -> int:
    from ..train import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["model_overrides"] = dict(values["model_overrides"])
    result = train(TrainConfig(**values))
    summary = {"run_dir": str(result.run_dir), "step": result.step, "tokens": result.tokens,
               "train_loss": result.train_loss, "val_loss": result.val_loss, "tokens_per_s": result.tokens_per_s,
               "mfu": result.mfu, "params": result.params, "elapsed_s": result.elapsed_s,
               "finished": result.finished, "exported": result.exported}
    if args.json:
        print(json.dumps(summary))
    val = "-" if result.val_loss is None else f"{result.val_loss:.4f}"
    where = f"; HF export ({result.exported}) in {result.run_dir / 'model'}" if result.exported else ""
    if result.finished and args.export_hf and not result.exported:
        where = f"; no HF export (this config has no HF equivalent): weights in {result.run_dir / 'checkpoints'}"
    if args.qat and (result.run_dir / "quantized").is_dir():
        where += f"; QAT model ({args.qat}) in {result.run_dir / 'quantized'}"
    print(f"step {result.step}: train loss {result.train_loss:.4f}, val loss {val}, "
          f"{result.tokens_per_s:.0f} tokens/s, MFU {result.mfu:.1%}; log in {result.run_dir / 'log.jsonl'}{where}",
          file=sys.stderr)
    return 0


def register(sub) -> None:
    """Add `train` to the `hybridlm` parser."""
    p = sub.add_parser(
        "train", help="pre-train a model (a preset shape) on prepared token shards; torchrun for several devices",
        description="Pre-train a model on a dataset made by `hybridlm data prepare`. Writes RUN_DIR/log.jsonl "
                    "(one JSON object per optimizer step), RUN_DIR/loss.png, checkpoints in RUN_DIR/checkpoints "
                    "(--resume continues the newest exactly) and, at the end, RUN_DIR/model as an HF checkpoint "
                    "that `hybridlm generate` and transformers load. On several devices run it under torchrun: "
                    "`torchrun --nproc-per-node N -m hybridlm train ...` (DDP; --fsdp shards with FSDP2; --tp T splits "
                    "each model copy over T ranks by heads and channels, with FSDP2 over the other N / T; --pp M cuts "
                    "the blocks into M pipeline stages; --ep E spreads the MoE experts over E = N ranks; --cp C splits "
                    "every sequence over C ranks). Supported layouts: data parallel x one of --tp, --pp, --ep, --cp, "
                    "and --tp x --cp; DDP or --fsdp on the data-parallel ranks, except --pp and --ep (DDP's "
                    "all-reduce, done by hand). Anything else is refused before the run starts.")
    _add_config_options(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary of the run on stdout")
    p.set_defaults(func=cmd_train)
