"""The encoder-decoder learns: train a small T5-style model with `hybridlm train`'s trainer on a
synthetic task generated on the fly, then measure exact match on held-out examples.

    python -m bench.seq2seq_train [--task task:reverse:4-10] [--steps 1500] [--minutes 8] [--threads N]

Held-out strings never occur in training (synthetic.py splits by a hash of the string). Exact
match is greedy decoding through generation/ (the source encoded once per batch). A short table,
then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from .common import emit_json, environment, print_table, progress

MODEL = dict(d_model=128, n_layers=2, n_decoder_layers=2, n_heads=4, head_dim=32, d_ff=256, dropout=0.0)


def run(task: str, steps: int, minutes: float | None, batch: int, lr: float, n_eval: int, work: Path,
        preset: str = "t5-tiny", seed: int = 0, threads: int | None = None) -> dict:
    from hybridlm.checkpoints.hf_t5 import load_t5
    from hybridlm.train import TrainConfig, train
    from hybridlm.train.synthetic import SyntheticTask, exact_match

    spec = SyntheticTask(task, "val", seed)
    cfg = TrainConfig(preset=preset, data_dir=task, out_dir=str(work / "run"), model_overrides=MODEL,
                      max_steps=steps, seq_len=spec.seq_len, micro_batch_size=batch, lr=lr, warmup_steps=min(100, steps // 10),
                      min_lr_ratio=0.05, weight_decay=0.0, eval_every=max(steps // 5, 1), eval_sequences=256,
                      save_every=0, plot=False, precision="fp32", device="cpu", seed=seed,
                      max_time_s=None if minutes is None else 60 * minutes, peak_flops=1e12, threads=threads)
    start = time.perf_counter()
    result = train(cfg)
    train_s = time.perf_counter() - start
    model = load_t5(work / "run" / "model")  # the exported HF T5 checkpoint: the run's real output
    progress(f"trained {result.step} steps in {train_s:.0f} s; evaluating {n_eval} held-out examples")
    start = time.perf_counter()
    with torch.inference_mode():
        em = exact_match(model, spec, n_eval)
    return {"task": task, "preset": preset, "model": MODEL, "params": result.params, "steps": result.step,
            "batch": batch, "lr": lr, "train_s": train_s, "final_train_loss": result.train_loss,
            "val_loss": result.val_loss, "held_out_examples": n_eval, "exact_match": em,
            "eval_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="task:reverse:4-10")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--minutes", type=float, default=None, help="stop training after this long (the LR schedule still ends at --steps)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval", type=int, default=1000, help="held-out examples for exact match")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (a model this small trains fastest on 1-2; more only add synchronisation)")
    p.add_argument("--work", default=None, help="keep the run here (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.work:
        result = run(args.task, args.steps, args.minutes, args.batch, args.lr, args.eval, Path(args.work),
                     threads=args.threads)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args.task, args.steps, args.minutes, args.batch, args.lr, args.eval, Path(tmp),
                         threads=args.threads)
    print_table([result], ["task", "params", "steps", "train_s", "val_loss", "held_out_examples", "exact_match"])
    emit_json({"bench": "seq2seq_train", **result, "env": environment(), "threads": torch.get_num_threads()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
