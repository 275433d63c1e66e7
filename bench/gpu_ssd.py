"""The Mamba-2 SSD scan in Triton (kernels/ssd_triton.py) against the PyTorch chunked scan and
against flash attention over the same tokens, on a GPU.

    python -m bench.gpu_ssd [--lengths 512,1024,2048,4096,8192,16384]

One layer's mixer core in Nemotron-H-8B's shape: 128 SSD heads of 64 channels, state 128, 8 groups,
chunks of 128, against causal attention of 32 heads x 128 (the same layer's width), batch 1, bf16
inputs. The Mamba-2 paper reports the SSD scan faster than FlashAttention-2 beyond 2K tokens; the
table says where it is here (ssd_vs_flash > 1: the scan is faster). Bytes moved by the scan (inputs
read once, output written once) over its time give its fraction of the copy ceiling.
Without CUDA it prints why and exits 2.
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

from .common import emit_json, print_table, progress
from .gpu_common import ceilings, gpu_environment, require_cuda, time_ms


def measure(t: int, copy_gb_s: float) -> dict:
    from hybridlm.kernels.flash_attn import flash_attn
    from hybridlm.kernels.ssd_triton import ssd_scan_triton
    from hybridlm.nn.ssd import ssd_scan_chunked

    h, p, n, g, chunk = 128, 64, 128, 8, 128
    dev, bf = "cuda", torch.bfloat16
    x = torch.randn(1, t, h, p, device=dev, dtype=bf)
    dt = F.softplus(torch.randn(1, t, h, device=dev) - 2.0)
    A = -torch.empty(h, device=dev).uniform_(1.0, 16.0)
    B, C = (torch.randn(1, t, g, n, device=dev, dtype=bf) for _ in range(2))
    ours, _ = ssd_scan_triton(x, dt, A, B, C, chunk)
    theirs, _ = ssd_scan_chunked(x, dt, A, B, C, chunk)
    row = {"tokens": t, "max_rel_err": ((ours - theirs).abs().max() / theirs.abs().max()).item()}
    row["ssd_triton_ms"] = time_ms(lambda: ssd_scan_triton(x, dt, A, B, C, chunk))
    row["ssd_torch_ms"] = time_ms(lambda: ssd_scan_chunked(x, dt, A, B, C, chunk), iters=3)
    q, k, v = (torch.randn(1, 32, t, 128, device=dev, dtype=bf) for _ in range(3))
    row["flash_ms"] = time_ms(lambda: flash_attn(q, k, v, causal=True))
    row["ssd_vs_flash"] = row["flash_ms"] / row["ssd_triton_ms"]
    row["ssd_vs_torch"] = row["ssd_torch_ms"] / row["ssd_triton_ms"]
    moved = x.numel() * 2 + B.numel() * 4 + dt.numel() * 4 + t * h * p * 4
    row["of_copy_ceiling"] = moved / (row["ssd_triton_ms"] * 1e-3) / 1e9 / copy_gb_s
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_ssd", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="512,1024,2048,4096,8192,16384", help="tokens, comma-separated")
    args = ap.parse_args(argv)
    if not require_cuda("bench.gpu_ssd"):
        return 2
    peak = ceilings()
    rows = []
    for t in map(int, args.lengths.split(",")):
        progress(f"ssd T={t}")
        rows.append(measure(t, peak["copy_gb_s"]))
    print_table(rows, ["tokens", "ssd_triton_ms", "ssd_torch_ms", "flash_ms", "ssd_vs_flash", "ssd_vs_torch",
                       "of_copy_ceiling", "max_rel_err"])
    emit_json({"bench": "gpu_ssd", "env": gpu_environment(), "ceilings": peak, "config": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
