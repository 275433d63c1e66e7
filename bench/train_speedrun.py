"""A speedrun in the spirit of nanoGPT's: ~10M-parameter models, the same data, the same optimizer,
the same wall-clock budget each; who reaches the lowest validation loss?

    python -m bench.train_speedrun [--minutes 10] [--models gpt2,llama,hybrid] [--threads N]

Models (8192-token BPE vocabulary trained on the corpus, tied embeddings: 2.1M of each model's
parameters are the embedding, reported apart):
  gpt2    GPT-2 recipe: learned positions, GELU MLP, pre-norm LayerNorm with biases, MHA
  llama   modern recipe: RoPE, SwiGLU, RMSNorm, GQA (4 query / 2 KV heads), no biases; d_ff 768
          so that a layer has exactly GPT-2's 786k parameters
  hybrid  Nemotron-H recipe: 8 Mamba-2 mixers and 2 attention layers (each followed by a squared-
          ReLU MLP), no position embedding; skipped with a note when this tree has no Mamba-2 block

Data: the default corpus (pydoc topics + the standard library's .py files) through `hybridlm data
prepare --default`, with a byte-level BPE of 8192 tokens trained on that corpus; built once into
--work and reused. Each model's step count is planned from a 3-step throughput probe (not counted
in the budget) so its cosine schedule ends on time; `max_time_s` stops it at the budget regardless.

Prints a table and, last, one JSON line (bench/common.py).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from .common import emit_json, environment, print_table, progress

VOCAB = 8192
SHAPES = {
    "gpt2": ("gpt2-tiny", dict(d_model=256, n_layers=10, n_heads=4, d_ff=1024)),
    "llama": ("llama-tiny", dict(d_model=256, n_layers=10, n_heads=4, n_kv_heads=2, d_ff=768, tie_embeddings=True,
                                 rope_theta=10000.0)),
    "hybrid": ("nemotron-h-tiny", dict(d_model=256, layer_pattern="M-M-M*-M-M-M*-M-M-", n_heads=4, n_kv_heads=2,
                                       head_dim=64, d_ff=1024, mamba_n_heads=8, mamba_head_dim=64, d_state=64,
                                       mamba_n_groups=1, mamba_chunk_size=64, tie_embeddings=True)),
}


def default_work_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hybridlm" / "speedrun"


def build_dataset(work: Path, vocab_size: int = VOCAB) -> Path:
    """The default corpus tokenized with a BPE of `vocab_size` trained on it (cached in `work`)."""
    from hybridlm.data.prepare import PrepareConfig, prepare
    from hybridlm.data.shards import MANIFEST
    from hybridlm.data.tokenizer_training import train_tokenizer, training_texts

    data, tok = work / f"default-bpe{vocab_size}", work / f"bpe{vocab_size}"
    if (data / MANIFEST).is_file():
        return data
    if not (tok / "tokenizer.json").is_file():
        progress(f"training a {vocab_size}-token BPE on the default corpus")
        train_tokenizer(training_texts([], default_corpus=True), vocab_size, tok, overwrite=True, show_progress=False)
    progress("preparing the default corpus (hybridlm data prepare --default)")
    prepare(data, PrepareConfig(default_corpus=True, tokenizer=str(tok), show_progress=False), overwrite=True)
    return data


def model_available(name: str) -> str | None:
    """None when this tree can build the model, else why not."""
    from hybridlm.config import ConfigError
    from hybridlm.models.decoder import Decoder
    from hybridlm.presets import PRESETS, get_preset

    preset, shape = SHAPES[name]
    if preset not in PRESETS:
        return f"preset {preset} is not in this tree"
    try:
        with torch.device("meta"):
            Decoder(get_preset(preset, **shape, vocab_size=VOCAB))
    except (ConfigError, TypeError) as e:
        return f"cannot build it here ({e})"
    return None


def _config(name: str, data: Path, out: Path, args, **kw):
    from hybridlm.train import TrainConfig

    preset, shape = SHAPES[name]
    base = dict(preset=preset, data_dir=str(data), out_dir=str(out),
                model_overrides={**shape, "max_seq_len": args.seq_len}, seq_len=args.seq_len,
                micro_batch_size=args.batch, lr=args.lr, min_lr_ratio=0.1, weight_decay=0.1, grad_clip=1.0,
                eval_every=0, eval_sequences=args.eval_sequences, save_every=0, keep_checkpoints=1,
                export_hf=False, progress=False, seed=args.seed, precision="fp32", threads=args.threads)
    return TrainConfig(**{**base, **kw})


def probe_step_seconds(name: str, data: Path, args) -> float:
    """Median seconds of optimizer steps 2 and 3 of a throw-away run."""
    from hybridlm.train.distributed import setup
    from hybridlm.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(_config(name, data, Path(tmp) / "probe", args, max_steps=3, warmup_steps=1,
                                  peak_flops=1.0), setup("cpu"))
        times = [trainer.train_step()["step_s"] for _ in range(3)]
    return sorted(times[1:])[0]


def run_one(name: str, data: Path, args, out_root: Path) -> dict:
    from hybridlm.train import read_log, train

    preset, shape = SHAPES[name]
    budget = args.minutes * 60
    step_s = probe_step_seconds(name, data, args)
    steps = max(10, int(budget / step_s))
    progress(f"{name}: ~{step_s:.2f} s per step -> planning {steps} steps in {args.minutes:g} min")
    cfg = _config(name, data, out_root / name, args, max_steps=steps, warmup_steps=max(1, steps // 10),
                  max_time_s=budget)
    result = train(cfg)
    embedding = VOCAB * shape["d_model"]
    vals = [e for e in read_log(result.run_dir) if e["type"] == "val"]
    return {"model": name, "params_M": result.params / 1e6, "non_embedding_M": (result.params - embedding) / 1e6,
            "steps": result.step, "planned_steps": steps, "tokens": result.tokens,
            "tokens_per_s": result.tokens_per_s, "val_loss": result.val_loss,
            "val_ppl": math.exp(result.val_loss) if result.val_loss is not None else None, "mfu": result.mfu,
            "train_loss": result.train_loss, "wall_s": result.elapsed_s, "finished_schedule": result.finished,
            "val_steps": [v["step"] for v in vals], "preset": preset, "overrides": shape}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget per model (default 10)")
    p.add_argument("--models", default="gpt2,llama,hybrid", help="comma-separated, from: " + ", ".join(SHAPES))
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--batch", type=int, default=4, help="sequences per optimizer step (default 4)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, the same for every model (default 2e-3)")
    p.add_argument("--eval-sequences", type=int, default=128, help="validation sequences at the end (default 128)")
    p.add_argument("--seed", type=int, default=0, help="init and data order (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data", default=None, help="a prepared dataset to use instead of building the default one")
    p.add_argument("--work", default=None, help=f"cache for the dataset and runs (default {default_work_dir()})")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SHAPES))
    if unknown:
        p.error(f"unknown models {unknown}; choose from {', '.join(SHAPES)}")
    if args.minutes <= 0:
        p.error("--minutes must be positive")

    work = Path(args.work) if args.work else default_work_dir()
    data = Path(args.data) if args.data else build_dataset(work)
    out_root = work / "runs" / time.strftime("%Y%m%d-%H%M%S")
    rows, skipped = [], {}
    for name in names:
        why = model_available(name)
        if why:
            skipped[name] = why
            progress(f"{name}: skipped: {why}")
            continue
        rows.append(run_one(name, data, args, out_root))
        progress(f"{name}: val loss {rows[-1]['val_loss']:.4f} after {rows[-1]['tokens']:,} tokens")
    print_table(rows, ["model", "params_M", "non_embedding_M", "steps", "tokens", "tokens_per_s", "val_loss",
                       "val_ppl", "mfu"])
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})")
    emit_json({"bench": "train_speedrun", **environment(), "config": {**vars(args), "vocab_size": VOCAB,
               "data": str(data)}, "results": rows, "skipped": skipped, "runs": str(out_root)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
