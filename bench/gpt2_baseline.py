"""Is our trainer as fast as plain PyTorch? A nanoGPT-style GPT-2 (Karpathy's model.py, trimmed)
trained in a plain loop, against hybridlm's GPT-2-style model trained by `hybridlm.train`, same
shape, same batch, same optimizer, same thread count, steps interleaved so both see the same
machine load.

    python -m bench.gpt2_baseline [--steps 20] [--seq-len 256] [--batch 8] [--threads N]

Prints a table and, last, one JSON line with both step times and the ratio ours / baseline in
tokens per second (>= 1 means ours is at least as fast), by wall clock and by process CPU time (the
second is steadier when other work shares the machine; use --threads 1 then).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import torch
from torch import nn
from torch.nn import functional as F

from .common import emit_json, environment, median, print_table, progress

# the speedrun's GPT-2-style shape (bench/train_speedrun.py): ~10M parameters with an 8192 vocabulary
SHAPE = dict(vocab_size=8192, d_model=256, n_layers=10, n_heads=4, d_ff=1024)


# ----------------------------------------------------------------- the baseline: standard GPT-2

class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class MLP(nn.Module):
    def __init__(self, d: int, d_ff: int):
        super().__init__()
        self.c_fc, self.gelu, self.c_proj = nn.Linear(d, d_ff), nn.GELU(approximate="tanh"), nn.Linear(d_ff, d)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, d_ff: int):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d), CausalSelfAttention(d, n_heads)
        self.ln_2, self.mlp = nn.LayerNorm(d), MLP(d, d_ff)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, n_layers: int, n_heads: int, d_ff: int, block_size: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, d_model), nn.Embedding(block_size, d_model)
        self.h = nn.ModuleList(Block(d_model, n_heads, d_ff) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as GPT-2
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def baseline_optimizer(model: nn.Module, lr: float) -> torch.optim.AdamW:
    """nanoGPT's configure_optimizers: decay 2-D tensors, not biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


# ----------------------------------------------------------------- the comparison

def _random_dataset(folder: str, vocab: int, tokens: int) -> None:
    import numpy as np

    from hybridlm.data.shards import write_manifest, write_split

    rng = np.random.default_rng(0)
    splits = {s: write_split(folder, s, [rng.integers(0, vocab, tokens)], vocab) for s in ("train", "val")}
    write_manifest(folder, {"dtype": "uint16", "vocab_size": vocab, "eos_token_id": None, "splits": splits})


def compare(steps: int, seq_len: int, batch: int, data_dir: str | None = None) -> dict:
    """Median optimizer-step seconds of both, interleaved step by step; first 2 steps are warm-up."""
    from hybridlm.train import TrainConfig
    from hybridlm.train.distributed import setup
    from hybridlm.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        if data_dir is None:
            data_dir = f"{tmp}/data"
            _random_dataset(data_dir, SHAPE["vocab_size"], (steps + 4) * batch * (seq_len + 1) + 1)
        cfg = TrainConfig(preset="gpt2-tiny", data_dir=data_dir, out_dir=f"{tmp}/run",
                          model_overrides={**SHAPE, "max_seq_len": seq_len}, max_steps=steps + 2, seq_len=seq_len,
                          micro_batch_size=batch, warmup_steps=2, lr=1e-3, eval_every=0, save_every=0,
                          progress=False, plot=False, export_hf=False, peak_flops=1e12, precision="fp32")
        ours = Trainer(cfg, setup("cpu"))
        ours.model.train()
        torch.manual_seed(0)
        base = GPT(**SHAPE, block_size=seq_len)
        opt = baseline_optimizer(base, 1e-3)
        times = {"ours": [], "baseline": []}
        cpu = {"ours": [], "baseline": []}  # process CPU seconds: less sensitive to other load on the machine
        def baseline_step(step: int) -> None:
            xy = ours.batches.batch(step * batch, batch).contiguous()  # the tokens our step reads
            loss = base(xy[:, :-1].contiguous(), xy[:, 1:].contiguous())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(base.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()

        for step in range(steps + 2):
            # the order alternates so neither always runs on the caches the other left behind
            order = (("ours", lambda: ours.train_step()), ("baseline", lambda: baseline_step(step)))
            for name, run in order if step % 2 == 0 else order[::-1]:
                start, start_cpu = time.perf_counter(), time.process_time()
                run()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
            progress(f"step {step + 1}/{steps + 2}: ours {times['ours'][-1]:.3f} s, baseline {times['baseline'][-1]:.3f} s")
        params = {"ours": ours.params, "baseline": sum(p.numel() for p in base.parameters())}
    tokens = batch * seq_len
    rows = []
    for name in ("ours", "baseline"):
        t, c = median(times[name][2:]), median(cpu[name][2:])
        rows.append({"model": name, "params": params[name], "step_s": t, "cpu_s": c, "tokens_per_s": tokens / t,
                     "tokens_per_cpu_s": tokens / c})
    ratio = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    cpu_ratio = rows[0]["tokens_per_cpu_s"] / rows[1]["tokens_per_cpu_s"]
    return {"rows": rows, "ratio": ratio, "cpu_ratio": cpu_ratio, "times": times}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="measured optimizer steps each (default 20; +2 warm-up)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data", default=None, help="a prepared dataset to read tokens from (default: random tokens)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = compare(args.steps, args.seq_len, args.batch, args.data)
    print_table([{**r, "tokens_per_s": round(r["tokens_per_s"], 1), "tokens_per_cpu_s": round(r["tokens_per_cpu_s"], 1)}
                 for r in result["rows"]], ["model", "params", "step_s", "cpu_s", "tokens_per_s", "tokens_per_cpu_s"])
    print(f"ours / baseline tokens/s: {result['ratio']:.3f} (wall clock), {result['cpu_ratio']:.3f} (CPU time)")
    emit_json({"bench": "gpt2_baseline", **environment(), "load_average": os.getloadavg(),
               "config": {**SHAPE, **vars(args)}, "results": result["rows"],
               "ratio_ours_over_baseline": result["ratio"], "cpu_ratio_ours_over_baseline": result["cpu_ratio"],
               "step_seconds": result["times"]})
    return 0 if math.isfinite(result["ratio"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
