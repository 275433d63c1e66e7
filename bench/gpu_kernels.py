"""The memory-bound Triton kernels against their PyTorch twins on a GPU: paged decode attention,
fused RMSNorm(+residual), SwiGLU, RoPE and the int4/int8 weight-only matmul at decode.

    python -m bench.gpu_kernels [--context 4096] [--batch 16]

Each row: the Triton kernel's time, the PyTorch path's time (the reference twin the models would
otherwise run: gather + SDPA, F.rms_norm, silu * up, apply_rope, dequantize + matmul), the bytes
the kernel must move at least, and that over its time as a fraction of the copy ceiling measured in
the same run. Shapes: Llama-3-8B-like (32 heads, 8 KV heads, head dim 128, width 4096, FFN 14336).
Without CUDA it prints why and exits 2.
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

from .common import emit_json, print_table, progress
from .gpu_common import ceilings, gpu_environment, require_cuda, time_ms


def _row(name, triton_fn, torch_fn, nbytes, copy_gb_s, check):
    out, ref = triton_fn(), torch_fn()
    err = (out.float() - ref.float()).abs().max().item() / max(ref.float().abs().max().item(), 1e-12)
    t_ms, p_ms = time_ms(triton_fn), time_ms(torch_fn)
    return {"kernel": name, "triton_ms": t_ms, "torch_ms": p_ms, "speedup": p_ms / t_ms, "bytes_mb": nbytes / 1e6,
            "of_copy_ceiling": nbytes / (t_ms * 1e-3) / 1e9 / copy_gb_s, "max_rel_err": err, "ok": err < check}


def rows(context: int, batch: int, copy_gb_s: float) -> list[dict]:
    from hybridlm.engine.paged_attention import DecodeBatch, _decode_gather
    from hybridlm.kernels.fused_ops import rms_norm_triton, rope_triton, swiglu_triton
    from hybridlm.kernels.paged_decode_triton import paged_decode_attention_triton
    from hybridlm.kernels.qmatmul_triton import qlinear_triton
    from hybridlm.nn.positions import apply_rope, rope_cos_sin
    from hybridlm.nn.quant.formats import QuantizedWeight, pack_int4
    from hybridlm.nn.quant.linear import quant_linear_ref

    dev, bf = "cuda", torch.bfloat16
    out = []
    h, h_kv, d, bs = 32, 8, 128, 16
    blocks = batch * context // bs
    k_pool = torch.randn(blocks * bs, h_kv, d, device=dev, dtype=bf)
    v_pool = torch.randn_like(k_pool)
    tables = torch.randperm(blocks, device=dev).int().view(batch, -1)
    lens = torch.full((batch,), context, dtype=torch.int32, device=dev)
    q = torch.randn(batch, h, d, device=dev, dtype=bf)
    gathered = DecodeBatch(batch, tables, lens)
    progress("paged decode attention")
    out.append(_row(f"paged_decode b{batch} ctx{context}",
                    lambda: paged_decode_attention_triton(q, k_pool, v_pool, tables, lens, bs, max_len=context),
                    lambda: _decode_gather(q, k_pool, v_pool, gathered, bs, None),
                    2 * k_pool.numel() * 2, copy_gb_s, 2e-2))
    x = torch.randn(batch * 512, 4096, device=dev, dtype=bf)
    r, w = torch.randn_like(x), torch.ones(4096, device=dev, dtype=bf)
    progress("fused ops")
    out.append(_row("rmsnorm+residual", lambda: rms_norm_triton(x, w, 1e-5, r)[0],
                    lambda: F.rms_norm(x + r, (4096,), w, 1e-5), 4 * x.numel() * 2, copy_gb_s, 2e-2))
    hg = torch.randn(batch * 512, 2 * 14336, device=dev, dtype=bf)
    out.append(_row("swiglu", lambda: swiglu_triton(hg), lambda: F.silu(hg[:, :14336]) * hg[:, 14336:],
                    hg.numel() * 2 * 3 // 2, copy_gb_s, 2e-2))
    qk = torch.randn(batch, 512, h + h_kv, d, device=dev, dtype=bf)
    inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=dev).float() / d))
    cos, sin = rope_cos_sin(inv, torch.arange(512, device=dev)[None].expand(batch, -1), bf)
    out.append(_row("rope", lambda: rope_triton(qk, cos, sin), lambda: apply_rope(qk, cos, sin),
                    2 * qk.numel() * 2, copy_gb_s, 2e-2))
    progress("quantized matmul (decode, 1 row)")
    n, k = 14336, 4096
    for fmt in ("int4", "int8"):
        if fmt == "int4":
            codes = pack_int4(torch.randint(0, 16, (n, k), dtype=torch.uint8, device=dev))
        else:
            codes = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=dev)
        wq = QuantizedWeight(fmt, codes, torch.rand(n, k // 32, device=dev).half() * 0.01, 32, k)
        xq = torch.randn(1, k, device=dev, dtype=bf)
        out.append(_row(f"qmatmul {fmt} 1x{k}x{n}", lambda: qlinear_triton(xq, wq.codes, wq.scales, None, None, fmt, 32),
                        lambda: quant_linear_ref(xq, wq, None), wq.nbytes(), copy_gb_s, 3e-2))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", type=int, default=4096, help="tokens per sequence for paged decode")
    ap.add_argument("--batch", type=int, default=16, help="sequences decoding at once")
    args = ap.parse_args(argv)
    if not require_cuda("bench.gpu_kernels"):
        return 2
    peak = ceilings()
    table = rows(args.context, args.batch, peak["copy_gb_s"])
    print_table(table, ["kernel", "triton_ms", "torch_ms", "speedup", "bytes_mb", "of_copy_ceiling", "max_rel_err", "ok"])
    emit_json({"bench": "gpu_kernels", "env": gpu_environment(), "ceilings": peak, "config": vars(args), "rows": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
