"""Why packed linears: weight bandwidth of the SmolLM2-135M matmuls at batch 1 and at prefill.

    python -m bench.linear [--tokens 1,512] [--repeats 5]

Streams all 30 layers' weights (425 MB in float32: far larger than any cache) through
nn.Linear with row-major weights (the PyTorch default), the same with column-major storage, and
oneDNN with reordered weights (`hybridlm.nn.packed_linear`), and reports GB/s of weight read.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from hybridlm.nn.packed_linear import PackedLinear
from hybridlm.presets import get_preset

from .common import emit_json, environment, median, print_table, progress


def layer_linears(n_layers: int, d: int, ff: int, qkv: int) -> list[nn.Linear]:
    shapes = [(d, qkv), (d, d), (d, 2 * ff), (ff, d)] * n_layers
    return [nn.Linear(i, o, bias=False) for i, o in shapes]


def column_major(linears: list[nn.Linear]) -> list[nn.Linear]:
    out = []
    for lin in linears:
        c = nn.Linear(lin.in_features, lin.out_features, bias=False)
        c.weight = nn.Parameter(lin.weight.detach().t().contiguous().t(), requires_grad=False)
        out.append(c)
    return out


def time_stack(mods, tokens: int, repeats: int) -> float:
    xs = {m.in_features: torch.randn(tokens, m.in_features) for m in mods}
    with torch.inference_mode():
        for m in mods:
            m(xs[m.in_features])
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for m in mods:
                m(xs[m.in_features])
            times.append(time.perf_counter() - start)
    return median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1,512", help="comma-separated batch sizes (rows of x)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cfg = get_preset("smollm2-135m")
    qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
    ref = layer_linears(cfg.n_layers, cfg.d_model, cfg.d_ff, qkv)
    weight_bytes = sum(m.weight.numel() * 4 for m in ref)
    variants = {"nn.Linear (row-major)": ref, "nn.Linear (column-major)": column_major(ref),
                "packed (oneDNN)": [PackedLinear(m) for m in ref]}
    rows = []
    for tokens in [int(t) for t in args.tokens.split(",")]:
        base = None
        for name, mods in variants.items():
            progress(f"{name}, {tokens} tokens")
            t = time_stack(mods, tokens, args.repeats)
            base = base or t
            rows.append({"impl": name, "tokens": tokens, "ms": t * 1e3, "weight_GB_per_s": weight_bytes / t / 1e9,
                         "speedup_vs_row_major": base / t})
    print_table(rows, ["impl", "tokens", "ms", "weight_GB_per_s", "speedup_vs_row_major"])
    emit_json({"bench": "linear", **environment(), "weight_bytes": weight_bytes, "results": rows})


if __name__ == "__main__":
    main()
