"""Why the chunked SSD scan: the sequential recurrence against SSD's block decomposition on the CPU.

    python -m bench.ssd [--lengths 512,1024,2048,4096,8192] [--heads 32] [--repeats 3] [--threads N]

One Mamba-2 layer's scan (hybridlm.nn.ssd) in Nemotron-H-8B's shape: 128 heads of 64 channels,
state 128, 8 B/C groups, chunks of 128, batch 1, float32. Both scans get the same inputs; the table
reports the time per call, the chunked scan's tokens per second and speedup, and its largest error
relative to the sequential output's scale. About a minute on 2 cores; --heads scales it.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from hybridlm.nn.ssd import ssd_scan_chunked, ssd_scan_ref

from .common import emit_json, environment, median, print_table, progress


def scan_inputs(length: int, heads: int, head_dim: int, state: int, groups: int, seed: int = 0):
    """Inputs shaped and scaled as a Mamba-2 mixer makes them: dt = softplus(.), A = -exp(A_log)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, length, heads, head_dim, generator=gen)
    dt = F.softplus(torch.randn(1, length, heads, generator=gen) - 2.0)
    A = -torch.empty(heads).uniform_(1.0, 16.0, generator=gen)
    B = torch.randn(1, length, groups, state, generator=gen)
    C = torch.randn(1, length, groups, state, generator=gen)
    return x, dt, A, B, C


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="512,1024,2048,4096,8192", help="comma-separated sequence lengths")
    ap.add_argument("--heads", type=int, default=128, help="SSD heads (Nemotron-H-8B: 128)")
    ap.add_argument("--head-dim", type=int, default=64, help="channels per head, P")
    ap.add_argument("--state", type=int, default=128, help="state size, N")
    ap.add_argument("--groups", type=int, default=8, help="B/C groups (Nemotron-H-8B: 8)")
    ap.add_argument("--chunk", type=int, default=128, help="chunk size of the chunked scan")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls of the chunked scan (median)")
    ap.add_argument("--ref-repeats", type=int, default=1,
                    help="timed calls of the sequential scan (one call already averages over every token)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = dict(heads=args.heads, head_dim=args.head_dim, state=args.state, groups=args.groups)
    rows = []
    with torch.inference_mode():
        warm = scan_inputs(256, **shape)  # first calls pay for allocator and thread-pool start-up
        ssd_scan_chunked(*warm, args.chunk)
        ssd_scan_ref(*warm)
        for length in [int(n) for n in args.lengths.split(",")]:
            inputs = scan_inputs(length, **shape)
            progress(f"length {length}: chunked")
            t_chunked, (y_chunked, _) = timed(lambda: ssd_scan_chunked(*inputs, args.chunk), args.repeats)
            progress(f"length {length}: sequential")
            t_ref, (y_ref, _) = timed(lambda: ssd_scan_ref(*inputs), args.ref_repeats)
            err = ((y_chunked - y_ref).abs().max() / y_ref.abs().max()).item()
            rows.append({"tokens": length, "sequential_ms": t_ref * 1e3, "chunked_ms": t_chunked * 1e3,
                         "chunked_tokens_per_s": length / t_chunked, "speedup": t_ref / t_chunked,
                         "max_rel_err": err})
    shown = [{**row, "max_rel_err": f"{row['max_rel_err']:.1e}"} for row in rows]
    print_table(shown, ["tokens", "sequential_ms", "chunked_ms", "chunked_tokens_per_s", "speedup", "max_rel_err"])
    emit_json({"bench": "ssd", **environment(), "config": {**shape, "chunk": args.chunk, "batch": 1,
                                                           "dtype": "float32", "repeats": args.repeats,
                                                           "ref_repeats": args.ref_repeats},
               "results": rows})


if __name__ == "__main__":
    main()
