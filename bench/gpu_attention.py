"""Flash attention in Triton (kernels/flash_attn.py) against PyTorch SDPA's flash backend, on a GPU.

    python -m bench.gpu_attention [--lengths 1024,2048,4096,8192] [--head-dims 64,128] [--heads 16]
                                  [--batch 1] [--backward]

Causal, bf16, batch 1 by default (tokens = lengths). FLOPs of causal attention forward:
4 B H T^2 D / 2 (two matmuls, half the scores masked); backward 2.5x that (FlashAttention-2's count).
achieved = kernel TFLOP/s / the bf16 matmul ceiling measured in the same run (bench/gpu_common.py).
The issue's goal: forward >= 60% of it at head dim 128, 8K tokens. Correctness is checked once per
shape against SDPA (max abs difference). Without CUDA it prints why and exits 2.
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

from .common import emit_json, print_table, progress
from .gpu_common import ceilings, gpu_environment, require_cuda, time_ms


def measure(t: int, d: int, heads: int, batch: int, backward: bool, peak_tflops: float) -> dict:
    from hybridlm.kernels.flash_attn import flash_attn

    q, k, v = (torch.randn(batch, heads, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
               for _ in range(3))
    flops = 4 * batch * heads * t * t * d / 2
    ours = flash_attn(q, k, v, causal=True)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        sdpa_ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    row = {"tokens": t, "head_dim": d, "max_abs_diff": (ours.float() - theirs.float()).abs().max().item()}
    row["triton_ms"] = time_ms(lambda: flash_attn(q, k, v, causal=True))
    row["sdpa_flash_ms"] = sdpa_ms
    row["triton_tflops"] = flops / (row["triton_ms"] * 1e-3) / 1e12
    row["achieved"] = row["triton_tflops"] / peak_tflops
    row["vs_sdpa"] = sdpa_ms / row["triton_ms"]
    if backward:
        do = torch.randn_like(ours)
        row["triton_bwd_ms"] = time_ms(lambda: torch.autograd.grad(flash_attn(q, k, v, causal=True), (q, k, v), do))
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            row["sdpa_bwd_ms"] = time_ms(lambda: torch.autograd.grad(
                F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), do))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_attention", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="1024,2048,4096,8192", help="sequence lengths, comma-separated")
    ap.add_argument("--head-dims", default="64,128", help="head dims, comma-separated (64 and/or 128)")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--backward", action="store_true", help="also time forward+backward")
    args = ap.parse_args(argv)
    if not require_cuda("bench.gpu_attention"):
        return 2
    peak = ceilings()
    rows = []
    for d in map(int, args.head_dims.split(",")):
        for t in map(int, args.lengths.split(",")):
            progress(f"attention T={t} D={d}")
            rows.append(measure(t, d, args.heads, args.batch, args.backward, peak["bf16_matmul_tflops"]))
    cols = ["tokens", "head_dim", "triton_ms", "sdpa_flash_ms", "vs_sdpa", "triton_tflops", "achieved", "max_abs_diff"]
    print_table(rows, cols + (["triton_bwd_ms", "sdpa_bwd_ms"] if args.backward else []))
    emit_json({"bench": "gpu_attention", "env": gpu_environment(), "ceilings": peak, "config": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
