"""Native quantized matmul for the CPU: the ops of qmatmul_ops.cpp as Python sees them.

`qlinear(x, codes, scales, offsets, lut, bias, fmt, group_size, act)` is the custom op
`torch.ops.hybridlm.qlinear`, built on first use (build.py) and given a fake implementation, so
`torch.compile(fullgraph=True)` keeps it as one node. Its reference twins are
`nn/quant/linear.py`'s `quant_linear_ref` (exact mode) and `quant_linear_fast_ref` (fast mode).

The instruction set is chosen in C++ (`select_isa`, once at load): AVX-512 VNNI, AVX2 + FMA +
F16C, or portable C++. `set_isa` lowers it (tests run every path the CPU has; entry points pass
an environment variable through it). When the library cannot be built, `available()` says so in
one warning line, once, and callers run the reference.
"""

from __future__ import annotations

import ctypes
import sys
from contextlib import contextmanager

import torch

from .build import KernelUnavailable, Unit, build

ISAS = ("avx512_vnni", "avx2", "portable")  # best first
ACT_MODES = ("exact", "fast")
NATIVE_FORMATS = ("int4", "int8", "lut4")  # lut8 (FP8 emulation) runs the reference
_UNITS = (Unit("qmatmul_ops.cpp", uses_torch=True), Unit("decode_step.cpp", uses_torch=True),
          Unit("qmatmul_avx2.cpp"), Unit("qmatmul_avx512.cpp"), Unit("qmatmul_portable.cpp"), Unit("threadpool.cpp"))
_HEADERS = ("qmatmul.h", "qmatmul_ops.h", "qmatmul_x86.h", "decode_math.h", "decode_math_x86.h", "threadpool.h")


class _State:
    lib: ctypes.CDLL | None = None
    error: str | None = None  # why the library is unavailable, once a load failed
    warned = False


def load() -> None:
    """Build (first use on this machine) and load the ops; KernelUnavailable with the reason if not."""
    if _State.lib is not None:
        return
    if _State.error is not None:
        raise KernelUnavailable(_State.error)
    try:
        path = build("hybridlm_qmatmul", _UNITS, _HEADERS)
        torch.ops.load_library(str(path))
        lib = ctypes.CDLL(str(path))
    except (KernelUnavailable, OSError) as e:
        _State.error = str(e)
        raise KernelUnavailable(_State.error) from e
    for fn, res, args in (("hlm_qmatmul_set_isa", ctypes.c_char_p, [ctypes.c_char_p]),
                          ("hlm_qmatmul_isa", ctypes.c_char_p, []),
                          ("hlm_qmatmul_set_gemm_rows", None, [ctypes.c_int64]),
                          ("hlm_qmatmul_gemm_rows", ctypes.c_int64, [])):
        getattr(lib, fn).restype, getattr(lib, fn).argtypes = res, args
    _register_fakes()
    _State.lib = lib


def _register_fakes() -> None:
    @torch.library.register_fake("hybridlm::qlinear")
    def _(x, codes, scales, offsets, lut, bias, tiles, fmt, group_size, act):
        return x.new_empty((*x.shape[:-1], codes.shape[0]))

    @torch.library.register_fake("hybridlm::qscale_tiles")
    def _(scales, offsets):
        return scales.new_empty((scales.shape[0] // 4, scales.shape[1], 1 if offsets is None else 2, 4))

    @torch.library.register_fake("hybridlm::qdequantize")
    def _(codes, scales, offsets, lut, fmt, group_size):
        k = codes.shape[1] * (1 if fmt == "int8" else 2)
        return codes.new_empty((codes.shape[0], k), dtype=torch.float32)


def available() -> bool:
    """Whether the native ops run here (building them on first use). The first failure prints one
    warning line on stderr; later calls stay quiet."""
    try:
        load()
    except KernelUnavailable as e:
        if not _State.warned:
            _State.warned = True
            print(f"hybridlm: warning: native quantized kernels unavailable ({e}); quantized layers run the "
                  "much slower reference path (dequantize, then matmul)", file=sys.stderr, flush=True)
        return False
    return True


def isa() -> str:
    """The instruction set the kernels use now."""
    load()
    return _State.lib.hlm_qmatmul_isa().decode()


def set_isa(name: str) -> str:
    """Use the best instruction set no better than `name` ("auto": the best this CPU has).
    Returns the one now in use (lower than `name` when the CPU lacks it)."""
    if name != "auto" and name not in ISAS:
        raise ValueError(f"unknown instruction set {name!r}; choose auto or one of {', '.join(ISAS)}")
    load()
    return _State.lib.hlm_qmatmul_set_isa(b"" if name == "auto" else name.encode()).decode()


def supported_isas() -> list[str]:
    """Every instruction set this CPU can run the kernels with, best first (leaves the choice as it was)."""
    current = isa()
    names = [n for n in ISAS if set_isa(n) == n]
    set_isa(current)
    return names


def gemm_rows() -> int:
    """Activation rows (batch x tokens) from which qlinear dequantizes tiles into a float GEMM."""
    load()
    return int(_State.lib.hlm_qmatmul_gemm_rows())


def set_gemm_rows(rows: int) -> None:
    load()
    _State.lib.hlm_qmatmul_set_gemm_rows(int(rows))


@contextmanager
def row_kernels_only():
    """Every activation row through the decode kernels (fast mode's int8 activations included) for
    the duration, never the dequantized-tile GEMM: how a score of many tokens at once sees exactly
    the arithmetic that decoding token by token does. A no-op without the library."""
    if not available():
        yield
        return
    before = gemm_rows()
    set_gemm_rows(1 << 62)
    try:
        yield
    finally:
        set_gemm_rows(before)


def describe() -> dict:
    """What quantized layers run here (builds the library on first use): native or not, and why."""
    if not available():
        return {"native": False, "isa": None, "supported_isas": [], "reason": _State.error,
                "formats": [], "gemm_rows": None}
    return {"native": True, "isa": isa(), "supported_isas": supported_isas(), "reason": None,
            "formats": list(NATIVE_FORMATS), "gemm_rows": gemm_rows()}


def summary_line(d: dict) -> str:
    """`describe()` in one line for `hybridlm info`."""
    if not d["native"]:
        return f"reference path only (dequantize + matmul): {d['reason']}"
    return (f"native {d['isa']} (this CPU runs {', '.join(d['supported_isas'])}); int4/int8 at groups of "
            f"32k inputs, lut4 exact; lut8 (FP8) runs the reference; {d['gemm_rows']}+ rows: dequantized-tile GEMM")


def unsupported_reason(fmt: str, group_size: int, scales: torch.Tensor, offsets: torch.Tensor | None) -> str | None:
    """Why the native op cannot run this weight (None if it can): the format, group or dtypes."""
    if fmt not in NATIVE_FORMATS:
        return f"{fmt} has no native kernel"
    if group_size % 32:
        return f"group size {group_size} is not a multiple of 32"
    if offsets is not None and offsets.dtype != scales.dtype:
        return "offsets and scales differ in dtype"
    return None


def qlinear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None,
            lut: torch.Tensor | None, bias: torch.Tensor | None, fmt: str, group_size: int,
            act: str = "exact", tiles: torch.Tensor | None = None) -> torch.Tensor:
    """y = x W^T + b, W in `fmt` (nn/quant/formats.py). x (..., K) float32/bfloat16/float16 on the
    CPU -> (..., N) in x's dtype. act: "exact" (float32 arithmetic) or "fast" (int8 activations
    per block of 32; lut4 always runs exact). tiles: `scale_tiles(scales, offsets)`, made once
    per weight (made for this call if None). Mutates nothing."""
    return torch.ops.hybridlm.qlinear(x, codes, scales, offsets, lut, bias, tiles, fmt, group_size, act)


def scale_tiles(scales: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """The scales (and offsets) regrouped for the kernels' tiles of 4 rows: (N // 4, groups, 1 or 2, 4)."""
    return torch.ops.hybridlm.qscale_tiles(scales, offsets)


def qdequantize(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None, lut: torch.Tensor | None,
                fmt: str, group_size: int) -> torch.Tensor:
    """The weight as float32 (N, K), bit for bit `dequantize_ref`."""
    return torch.ops.hybridlm.qdequantize(codes, scales, offsets, lut, fmt, group_size)
