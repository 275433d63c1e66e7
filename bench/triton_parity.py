"""Every Triton kernel against its reference twin, once, at small sizes: the largest error of each.

    python -m bench.triton_parity

On a machine without CUDA the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set here
before the kernels are imported); on a GPU they run compiled. Inputs are float32 (bf16 tiles are not
multiplied correctly by the interpreter), errors are max |kernel - reference| over max |reference|,
with float64 references. This is the correctness figure a CPU can give; speed needs bench/gpu_*.py.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from .common import emit_json, environment, print_table, progress


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _cases(dev: str):
    from hybridlm.kernels import flash_attn as fa
    from hybridlm.kernels import fused_ops as fo
    from hybridlm.kernels.paged_attention import paged_decode_attention_ref
    from hybridlm.kernels.paged_decode_triton import paged_decode_attention_triton
    from hybridlm.kernels.qmatmul_triton import qlinear_triton
    from hybridlm.kernels.ssd_triton import ssd_scan_triton, ssd_step_triton
    from hybridlm.nn.positions import apply_rope_ref, rope_cos_sin
    from hybridlm.nn.quant.formats import QuantizedWeight, pack_int4
    from hybridlm.nn.quant.linear import quant_linear_ref
    from hybridlm.nn.ssd import ssd_scan_ref, ssd_step

    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dev)

    def flash(causal, window, d):
        q, k, v = rnd(1, 4, 40, d).requires_grad_(), rnd(1, 2, 40, d).requires_grad_(), rnd(1, 2, 40, d).requires_grad_()
        o = fa.flash_attn(q, k, v, causal=causal, window=window)
        do = torch.randn_like(o)
        grads = torch.autograd.grad(o, (q, k, v), do)
        ins = [t.detach().double().requires_grad_() for t in (q, k, v)]
        o_ref = fa.flash_attn_ref(*ins, causal=causal, window=window)
        ref_grads = torch.autograd.grad(o_ref, ins, do.double())
        return _rel(o, o_ref), max(_rel(a, b) for a, b in zip(grads, ref_grads))

    yield "flash attention causal GQA D=64", lambda: flash(True, None, 64)
    yield "flash attention window 9 D=128", lambda: flash(True, 9, 128)

    def paged():
        kp, vp = rnd(240, 2, 64), rnd(240, 2, 64)
        tables = torch.randperm(60, generator=g).int().view(4, 15).to(dev)
        lens = torch.tensor([1, 13, 37, 60], dtype=torch.int32, device=dev)
        q = rnd(4, 8, 64)
        out = paged_decode_attention_triton(q, kp, vp, tables, lens, 4, n_splits=3)
        return _rel(out, paged_decode_attention_ref(q.double(), kp.double(), vp.double(), tables, lens, 4)), None

    yield "paged decode split-K 3", paged

    def ssd():
        x, dt, A = rnd(1, 40, 4, 16).requires_grad_(), (torch.rand(1, 40, 4, generator=g) * 0.5).to(dev), -torch.rand(4, generator=g).to(dev) * 3
        B, C = rnd(1, 40, 2, 16), rnd(1, 40, 2, 16)
        y, final = ssd_scan_triton(x, dt, A, B, C, 16)
        gy = torch.randn_like(y)
        (gx,) = torch.autograd.grad(y, (x,), gy)
        xr = x.detach().double().requires_grad_()
        y_ref, _ = ssd_scan_ref(xr, dt.double(), A.double(), B.double(), C.double())
        (gx_ref,) = torch.autograd.grad(y_ref, (xr,), gy.double())
        return _rel(y, y_ref), _rel(gx, gx_ref)

    yield "ssd chunked scan (4 kernels)", ssd

    def step():
        s, x, dt = rnd(2, 4, 16, 16), rnd(2, 4, 16), torch.rand(2, 4, generator=g).to(dev)
        A, B, C = -torch.rand(4, generator=g).to(dev), rnd(2, 2, 16), rnd(2, 2, 16)
        y, _ = ssd_step_triton(s, x, dt, A, B, C)
        return _rel(y, ssd_step(s.double(), x.double(), dt.double(), A.double(), B.double(), C.double())[0]), None

    yield "ssd single step", step

    def rms():
        x, r, w = rnd(8, 96).requires_grad_(), rnd(8, 96), rnd(96)
        y, _ = fo.rms_norm_triton(x, w, 1e-5, r)
        y_ref, _ = fo.rms_norm_residual_ref(x.double(), w.double(), 1e-5, r.double())
        return _rel(y, y_ref), None

    yield "rmsnorm + residual", rms
    yield "swiglu", lambda: (_rel(fo.swiglu_triton(h := rnd(8, 128)), fo.swiglu_ref(h.double())), None)

    def rope():
        x = rnd(2, 9, 6, 32)
        inv = 1.0 / (10000 ** (torch.arange(0, 32, 2, device=dev).float() / 32))
        pos = torch.arange(9, device=dev)[None].expand(2, 9)
        cos, sin = rope_cos_sin(inv, pos, torch.float32)
        return _rel(fo.rope_triton(x, cos, sin), apply_rope_ref(x.double(), pos, inv)), None

    yield "rope", rope

    def qmm(fmt):
        if fmt == "int4":
            codes = pack_int4(torch.randint(0, 16, (48, 128), dtype=torch.uint8, generator=g))
        else:
            codes = torch.randint(-128, 128, (48, 128), dtype=torch.int8, generator=g)
        w = QuantizedWeight(fmt, codes.to(dev), (torch.rand(48, 4, generator=g) * 0.1).half().to(dev), 32, 128)
        x = rnd(5, 128)
        return _rel(qlinear_triton(x, w.codes, w.scales, None, None, fmt, 32), quant_linear_ref(x.double(), w, None)), None

    yield "int4 weight-only matmul", lambda: qmm("int4")
    yield "int8 weight-only matmul", lambda: qmm("int8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.triton_parity", description=__doc__.split("\n\n")[0])
    ap.parse_args(argv)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernel modules are imported
    from hybridlm.kernels import triton_support

    if not triton_support.installed():
        print("bench.triton_parity: triton is not installed: pip install 'hybridlm[triton]'")
        return 2
    rows = []
    for name, fn in _cases(dev):
        progress(name)
        start = time.perf_counter()
        fwd, bwd = fn()
        rows.append({"kernel": name, "fwd_rel_err": f"{fwd:.1e}", "grad_rel_err": "-" if bwd is None else f"{bwd:.1e}",
                     "seconds": time.perf_counter() - start})
    print_table(rows, ["kernel", "fwd_rel_err", "grad_rel_err", "seconds"])
    emit_json({"bench": "triton_parity", "mode": triton_support.describe(), "env": environment(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
