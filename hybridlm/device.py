"""Choosing the device and dtype a model runs in, from what the hardware does fast."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu. An unavailable device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return device


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX", "AVX512_AMX")


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA; on CPUs float32 unless bf16 is native: emulated bf16 matmuls measured
    several times slower than float32 on this project's machines."""
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def resolve_dtype(name: str, device: torch.device) -> tuple[torch.dtype, str | None]:
    """The dtype for `name` ('auto' or a key of DTYPES) and a warning when it will be slow here."""
    if name == "auto":
        return default_dtype(device), None
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}")
    dtype = DTYPES[name]
    if device.type == "cpu" and dtype != torch.float32 and not cpu_has_native_bf16():
        return dtype, (f"{name} has no native support on this CPU: matmuls are emulated and prefill "
                       "runs several times slower than float32 (the default here)")
    return dtype, None
