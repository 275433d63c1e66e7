"""What the GPU benchmarks share: the CUDA check, CUDA-event timing and the two ceilings.

Every bench/gpu_*.py exits with one clear line (status 2) where no CUDA device is present, since
their figures mean nothing elsewhere. Ceilings are measured once per run, never quoted from a
datasheet: memory bandwidth by a large device-to-device copy (read + write bytes), compute by a
large bf16 matmul. A kernel's achieved fraction is its FLOP/s over the matmul ceiling (compute-bound
kernels) or its bytes/s over the copy ceiling (memory-bound ones).
"""

from __future__ import annotations

import sys

import torch

from .common import environment, progress


def require_cuda(script: str) -> bool:
    """True on a CUDA machine with Triton; otherwise prints why to stderr and returns False."""
    if not torch.cuda.is_available():
        print(f"{script}: no CUDA device here (torch {torch.__version__}); this benchmark measures GPU kernels "
              "and only runs on a GPU (scripts/gpu_check.sh runs them all)", file=sys.stderr)
        return False
    from hybridlm.kernels import triton_support

    if not triton_support.installed():
        print(f"{script}: triton is not installed: pip install 'hybridlm[triton]'", file=sys.stderr)
        return False
    return True


def gpu_environment() -> dict:
    props = torch.cuda.get_device_properties(0)
    import triton

    return {**environment(), "gpu": props.name, "sms": props.multi_processor_count,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
            "triton": triton.__version__}


def time_ms(fn, warmup: int = 3, iters: int = 10) -> float:
    """Median milliseconds of fn() between CUDA events, after warm-up (compiles, autotunes)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def ceilings(copy_gib: float = 2.0, matmul_n: int = 8192) -> dict:
    """Measured peaks: copy bandwidth (GB/s, bytes read + written) and bf16 matmul TFLOP/s."""
    progress("measuring ceilings: large copy and large bf16 matmul")
    n = int(copy_gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src))
    bandwidth = 2 * src.numel() * 2 / (ms * 1e-3) / 1e9
    del src, dst
    a = torch.randn(matmul_n, matmul_n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn_like(a)
    ms = time_ms(lambda: a @ b)
    tflops = 2 * matmul_n**3 / (ms * 1e-3) / 1e12
    return {"copy_gb_s": round(bandwidth, 1), "bf16_matmul_tflops": round(tflops, 1)}
