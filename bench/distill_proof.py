"""Does a student distilled from a larger teacher beat the same student trained from scratch?

The default corpus (pydoc prose and standard-library code, `hybridlm data prepare --default`) is
tokenized with SmolLM2's tokenizer. Teacher: SmolLM2-135M (a Transformer, run in its GGUF's own
4-bit precision, frozen). Student: a small hybrid Mamba-2 + attention model (`nemotron-h-tiny`'s
pattern M-M*-M-, SmolLM2's vocabulary). Two runs of the same trainer with the same initial weights,
data order, tokens and steps: one with plain cross-entropy (from scratch), one with
(1 - alpha) CE + alpha T^2 KL(teacher || student). Reported: each one's validation cross-entropy
on the same held-out windows.

    python -m bench.distill_proof [--steps 120] [--threads 2] [--out out/distill_proof]

Progress on stderr; a table, then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from bench.common import emit_json, environment, print_table, progress


def prepared(out: Path, max_docs: int, tokenizer: str) -> Path:
    """The default corpus as token shards in the teacher's tokenizer (made once, then reused)."""
    from hybridlm.data.prepare import PrepareConfig, prepare

    data = out / "data"
    if not (data / "manifest.json").is_file():
        progress(f"distill_proof: preparing the default corpus ({max_docs} documents per source) into {data}")
        prepare(data, PrepareConfig(default_corpus=True, max_docs=max_docs, tokenizer=tokenizer, show_progress=False),
                overwrite=True)
    return data


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--student", default="nemotron-h-tiny", help="a preset: the student's shape")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--max-docs", type=int, default=400, help="documents per source of the default corpus")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="out/distill_proof")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from hybridlm.finetune.api import FinetuneConfig, finetune
    from hybridlm.finetune.distill import DistillConfig
    from hybridlm.models.decoder import Decoder
    from hybridlm.presets import get_preset
    from hybridlm.train import TrainConfig, train

    out = Path(args.out)
    data = prepared(out, args.max_docs, args.teacher)
    common = dict(preset=args.student, data_dir=str(data), max_steps=args.steps, seq_len=args.seq_len,
                  micro_batch_size=args.batch, lr=args.lr, warmup_steps=10, eval_every=0, eval_sequences=128,
                  save_every=0, plot=False, threads=args.threads, seed=0, export_hf=False)
    runs = {}
    for name in ("scratch", "distilled"):
        shutil.rmtree(out / name, ignore_errors=True)
        tcfg = TrainConfig(out_dir=str(out / name), **common)
        progress(f"distill_proof: {name} ({args.steps} steps of {args.batch} x {args.seq_len} tokens)")
        if name == "scratch":  # the same student the distill run builds: seed, preset, the teacher's vocab
            from hybridlm.checkpoints.registry import describe_source

            torch.manual_seed(0)
            vocab = describe_source(args.teacher)[0].vocab_size
            result = train(tcfg, model=Decoder(get_preset(args.student, vocab_size=vocab)))
            info = {}
        else:
            fcfg = FinetuneConfig("distill", args.student, str(data), teacher=args.teacher,
                                  distill=DistillConfig(temperature=args.temperature, alpha=args.alpha))
            result, info = finetune(fcfg, tcfg)
        runs[name] = {"val_loss": result.val_loss, "train_loss": result.train_loss, "tokens": result.tokens,
                      "elapsed_s": result.elapsed_s, **info}
    rows = [{"student": f"{args.student} from scratch", "val_loss": runs["scratch"]["val_loss"],
             "tokens": runs["scratch"]["tokens"], "seconds": runs["scratch"]["elapsed_s"]},
            {"student": f"{args.student} distilled from {args.teacher}", "val_loss": runs["distilled"]["val_loss"],
             "tokens": runs["distilled"]["tokens"], "seconds": runs["distilled"]["elapsed_s"]}]
    print_table(rows, ["student", "val_loss", "tokens", "seconds"])
    emit_json({"bench": "distill_proof", "teacher": args.teacher, "student": args.student, "runs": runs,
               "config": {k: v for k, v in vars(args).items() if k != "out"},
               "distilled_minus_scratch": runs["distilled"]["val_loss"] - runs["scratch"]["val_loss"],
               **environment()})


if __name__ == "__main__":
    main()
