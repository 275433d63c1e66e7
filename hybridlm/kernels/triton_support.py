"""When the Triton kernels run, decided in one place.

The GPU kernels (flash_attn.py, paged_decode_triton.py, ssd_triton.py, fused_ops.py,
qmatmul_triton.py) run where Triton can launch them:
  - on CUDA tensors, compiled for the GPU (the path the models take);
  - on CPU tensors only under Triton's interpreter (`TRITON_INTERPRET=1` set before the kernel
    modules are imported, as tests/kernels/triton/conftest.py does), which executes each program
    instance with NumPy: slow, exact enough to prove the kernels at small sizes on any machine.

`use_triton(t)` is what the models ask (CUDA only: on CPU nothing changes); `runs_on(t)` is what a
kernel entry point asks before launching, and `require(t)` turns its "no" into a clear error.
Triton is the optional extra `hybridlm[triton]`; without it the models keep their PyTorch paths.
"""

from __future__ import annotations

import importlib.util
import os

import torch


def installed() -> bool:
    """Whether the `triton` package can be imported (the `[triton]` extra)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def runs_on(t: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on tensors where `t` lives: CUDA with Triton installed,
    or CPU under the interpreter."""
    if not installed():
        return False
    return t.device.type == "cpu" if interpreting() else t.is_cuda


def require(t: torch.Tensor, what: str) -> None:
    """Raise ValueError saying why the Triton kernel `what` cannot run on `t`'s device."""
    if not installed():
        raise ValueError(f"{what} needs Triton: pip install 'hybridlm[triton]'")
    if not runs_on(t):
        where = "CPU tensors under TRITON_INTERPRET=1" if interpreting() else "CUDA tensors"
        raise ValueError(f"{what} runs on {where}, got a tensor on {t.device}")


class _Switch:
    enabled = True  # set_enabled(False): CUDA models take their PyTorch paths (benchmarks compare both)


def set_enabled(on: bool) -> None:
    """Turn the models' use of the Triton kernels on CUDA on or off (process-wide)."""
    _Switch.enabled = bool(on)


def use_triton(t: torch.Tensor) -> bool:
    """The models' switch: True for CUDA tensors when Triton is installed, not interpreting, not
    switched off and not inside a torch.compile trace (the compiled decode step keeps the PyTorch
    ops it was measured with). CPU forwards never change."""
    if not (t.is_cuda and _Switch.enabled and installed()) or interpreting():
        return False
    return not torch.compiler.is_compiling()


def describe() -> str:
    """One line for `hybridlm info`."""
    if not installed():
        return "not installed (pip install 'hybridlm[triton]'); CUDA models use PyTorch SDPA and references"
    import triton

    mode = "interpreter (CPU, tests only)" if interpreting() else "compiled for CUDA"
    gpu = "CUDA available" if torch.cuda.is_available() else "no CUDA device: the models keep their PyTorch paths"
    return f"triton {triton.__version__}, {mode}; {gpu}"
