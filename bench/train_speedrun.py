"""A speedrun in the spirit of nanoGPT's: ~10M-parameter models, the same data, the same optimizer,
the same wall-clock budget each; who reaches the lowest validation loss?

    python -m bench.train_speedrun [--minutes 10] [--models gpt2,llama,hybrid] [--threads N]

Models (8192-token BPE vocabulary trained on the corpus, tied embeddings: 2.1M of each model's
parameters are the embedding, reported apart):
  gpt2    GPT-2 recipe: learned positions, GELU MLP, pre-norm LayerNorm with biases, MHA
  llama   modern recipe: RoPE, SwiGLU, RMSNorm, GQA (4 query / 2 KV heads), no biases; d_ff 768
          so that a layer has exactly GPT-2's 786k parameters
  hybrid  Nemotron-H recipe: 8 Mamba-2 mixers, 2 attention layers and 8 squared-ReLU MLPs
          (M-M-M*-M-M-M*-M-M-), no position embedding; skipped with a note when this tree has no
          Mamba-2 block

Data: the default corpus (pydoc topics + the standard library's .py files) through `hybridlm data
prepare --default`, with a byte-level BPE of 8192 tokens trained on that corpus; built once into
--work and reused. The models take turns, one optimizer step each, every model's clock counting its
own steps only, so load from elsewhere on the machine slows all of them alike; each model's cosine
schedule is re-planned every step to end with its budget. Validation (128 sequences of 256) at the
end is not counted in the budget. `--models gpt2,llama,llama-alibi` adds an ablation: the
Llama-style model with ALiBi in place of RoPE.

Prints a table and, last, one JSON line (bench/common.py).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from .common import emit_json, environment, print_table, progress

VOCAB = 8192
SHAPES = {
    "gpt2": ("gpt2-tiny", dict(d_model=256, n_layers=10, n_heads=4, d_ff=1024)),
    "llama": ("llama-tiny", dict(d_model=256, n_layers=10, n_heads=4, n_kv_heads=2, d_ff=768, tie_embeddings=True,
                                 rope_theta=10000.0)),
    # ablation: the modern recipe with ALiBi's recency bias instead of RoPE (not run by default)
    "llama-alibi": ("llama-tiny", dict(d_model=256, n_layers=10, n_heads=4, n_kv_heads=2, d_ff=768,
                                       tie_embeddings=True, position="alibi")),
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


def train_round_robin(names: list[str], data: Path, args, out_root: Path) -> list[dict]:
    """Train every model for `args.minutes` of its own step time, one optimizer step each in turn.

    Taking turns makes the comparison fair on a shared machine: a burst of load elsewhere slows
    every model alike instead of whichever ran at that moment. Each model's cosine schedule is
    re-planned before every step to end when its budget does (steps left = time left / mean step
    time so far), so a model that runs faster gets more steps, as a fixed wall-clock budget means.
    """
    from hybridlm.train.distributed import setup
    from hybridlm.train.metrics import plot_losses
    from hybridlm.train.trainer import Trainer

    budget = args.minutes * 60
    ctx = setup("cpu")
    trainers = {n: Trainer(_config(n, data, out_root / n, args, max_steps=10**6, warmup_steps=args.warmup,
                                   peak_flops=1.0), ctx) for n in names}
    clock = {n: 0.0 for n in names}
    first_step: dict[str, float] = {}  # seconds of each model's first step
    active = list(names)
    while active:
        for name in list(active):
            trainer = trainers[name]
            if clock[name] >= budget:
                active.remove(name)
                continue
            if trainer.step >= 2:  # the first step pays for warm-up: plan from the later ones
                mean = (clock[name] - first_step[name]) / (trainer.step - 1)
                trainer.cfg.max_steps = max(trainer.step + 1, trainer.step + int((budget - clock[name]) / mean))
            start = time.perf_counter()
            entry = trainer.train_step()
            clock[name] += time.perf_counter() - start
            if trainer.step == 1:
                first_step[name] = clock[name]
            trainer.log.write({**entry, "elapsed_s": clock[name]})
        if active:
            progress("  ".join(f"{n}: step {trainers[n].step}, {clock[n]:.0f}/{budget:.0f} s, loss "
                               f"{trainers[n].log.entries()[-1]['loss']:.3f}" for n in active))
    rows = []
    for name in names:
        trainer = trainers[name]
        val = trainer.evaluate()
        trainer.log.write(val)
        plot_losses(trainer.log.entries(), trainer.run_dir / "loss.png", title=f"speedrun: {name}")
        train_entries = [e for e in trainer.log.entries() if e["type"] == "train"]
        tokens = trainer.samples_seen * args.seq_len
        steady = sum(e["step_s"] for e in train_entries[1:]) or clock[name]
        tok_s = (len(train_entries) - 1) * args.batch * args.seq_len / steady if len(train_entries) > 1 else 0.0
        embedding = trainer.model_cfg.vocab_size * trainer.model_cfg.d_model  # tied: counted once
        rows.append({"model": name, "params_M": trainer.params / 1e6,
                     "non_embedding_M": (trainer.params - embedding) / 1e6, "steps": trainer.step, "tokens": tokens,
                     "tokens_per_s": tok_s, "gflop_per_s": tok_s * trainer.flops_per_token / 1e9,
                     "val_loss": val["val_loss"], "val_ppl": val["val_ppl"],
                     "train_loss_last20": sum(e["loss"] for e in train_entries[-20:]) / len(train_entries[-20:]),
                     "wall_s": clock[name], "preset": SHAPES[name][0], "overrides": SHAPES[name][1]})
        progress(f"{name}: val loss {val['val_loss']:.4f} after {tokens:,} tokens in {clock[name]:.0f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget per model (default 10)")
    p.add_argument("--models", default="gpt2,llama,hybrid",
                   help="comma-separated, from: " + ", ".join(SHAPES) + " (default gpt2,llama,hybrid)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--batch", type=int, default=4, help="sequences per optimizer step (default 4)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, the same for every model (default 2e-3)")
    p.add_argument("--warmup", type=int, default=20, help="linear warm-up steps (default 20)")
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
    skipped = {}
    for name in names:
        why = model_available(name)
        if why:
            skipped[name] = why
            progress(f"{name}: skipped: {why}")
    rows = train_round_robin([n for n in names if n not in skipped], data, args, out_root)
    print_table(rows, ["model", "params_M", "non_embedding_M", "steps", "tokens", "tokens_per_s", "gflop_per_s",
                       "val_loss", "val_ppl"])
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})")
    emit_json({"bench": "train_speedrun", **environment(), "config": {**vars(args), "vocab_size": VOCAB,
               "data": str(data)}, "results": rows, "skipped": skipped, "runs": str(out_root)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
