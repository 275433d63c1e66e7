"""Quantized weight formats: what a quantized linear stores, and the plain dequantization of each.

Every format stores a weight W (out, in) as small integer `codes` plus per-group float `scales`
over groups of `group_size` consecutive inputs of one output row (group_size divides `in`; it is a
multiple of 32 for the 4-bit formats). The value of a code q in group g of row r:

    int4:  W = s * (q - 8)                   q in [0, 15]; symmetric (llama.cpp Q4_0 when g = 32)
           W = s * q + m                     with `offsets` m (asymmetric; Q4_1 when g = 32)
    int8:  W = s * q                         q in [-128, 127] (Q8_0 when g = 32)
    lut4:  W = s * lut[q]                    q in [0, 15]: NF4, FP4 e2m1 or a k-means table
    lut8:  W = s * lut[q]                    q in [0, 255]: FP8 e4m3 / e5m2 emulation

4-bit codes are packed two per byte in llama.cpp's order, so GGUF blocks map on them one to one
and one `& 0xF` / `>> 4` in a kernel yields 16 consecutive inputs: within every run of 32 inputs
(16 bytes), byte j holds input j in its low nibble and input j + 16 in its high nibble.

    inputs   0  1 ... 15 | 16 17 ... 31        byte j = (x[j + 16] << 4) | x[j]
    byte     0  1 ... 15 |  0  1 ... 15

Scales and offsets are float16 (as in GGUF and GPTQ/AWQ checkpoints) or float32 where a source
has finer scales (GGUF K-quants); a lut is float32, (16,) or (256,) for the whole tensor or
(out, 16) per row. Everything is a plain tensor, so a quantized model saves as safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FORMATS = ("int4", "int8", "lut4", "lut8")
BITS = {"int4": 4, "int8": 8, "lut4": 4, "lut8": 8}
NIBBLE_RUN = 32  # inputs per run of 16 packed bytes


class QuantFormatError(ValueError):
    """Codes, scales and shapes that do not describe a valid quantized weight."""


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15], (..., n) with n % 32 == 0 -> packed uint8 (..., n // 2)."""
    if q.shape[-1] % NIBBLE_RUN:
        raise QuantFormatError(f"4-bit codes need a multiple of {NIBBLE_RUN} inputs, got {q.shape[-1]}")
    runs = q.to(torch.uint8).reshape(*q.shape[:-1], -1, 2, NIBBLE_RUN // 2)  # (..., runs, half, 16)
    return (runs[..., 0, :] | (runs[..., 1, :] << 4)).reshape(*q.shape[:-1], q.shape[-1] // 2)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`: packed uint8 (..., n // 2) -> uint8 codes (..., n)."""
    runs = packed.reshape(*packed.shape[:-1], -1, NIBBLE_RUN // 2)  # (..., runs, 16)
    return torch.stack((runs & 0x0F, runs >> 4), dim=-2).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


@dataclass
class QuantizedWeight:
    """One quantized weight matrix (out, in) in one of `FORMATS` (see the module doc).

    codes: uint8 (out, in // 2) for 4-bit formats, int8 (int8) or uint8 (lut8) (out, in).
    scales: float16 or float32 (out, in // group_size). offsets: like scales, int4 only, or None.
    lut: float32 (16,), (256,) or (out, 16) for the lut formats, else None.
    """

    fmt: str
    codes: torch.Tensor
    scales: torch.Tensor
    group_size: int
    in_features: int
    offsets: torch.Tensor | None = None
    lut: torch.Tensor | None = None

    def __post_init__(self) -> None:
        validate(self)

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def bits(self) -> int:
        return BITS[self.fmt]

    def nbytes(self) -> int:
        """Bytes held: codes, scales, offsets and lut."""
        parts = (self.codes, self.scales, self.offsets, self.lut)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_ref(self).to(dtype)


def validate(w: QuantizedWeight) -> None:
    """Raise QuantFormatError naming the first inconsistency of w."""
    if w.fmt not in FORMATS:
        raise QuantFormatError(f"unknown quantized format {w.fmt!r}; known: {', '.join(FORMATS)}")
    n_in, g = w.in_features, w.group_size
    if g <= 0 or n_in % g:
        raise QuantFormatError(f"group size {g} does not divide the {n_in} inputs")
    if w.bits == 4 and g % NIBBLE_RUN:
        raise QuantFormatError(f"4-bit formats need a group size that is a multiple of {NIBBLE_RUN}, got {g}")
    width = n_in // 2 if w.bits == 4 else n_in
    code_dtypes = {"int4": (torch.uint8,), "lut4": (torch.uint8,), "int8": (torch.int8,), "lut8": (torch.uint8,)}
    if w.codes.dim() != 2 or w.codes.shape[1] != width or w.codes.dtype not in code_dtypes[w.fmt]:
        raise QuantFormatError(f"{w.fmt} codes must be {code_dtypes[w.fmt][0]} (out, {width}), "
                               f"got {w.codes.dtype} {tuple(w.codes.shape)}")
    groups = (w.out_features, n_in // g)
    for name in ("scales", "offsets"):
        t = getattr(w, name)
        if t is None:
            continue
        if tuple(t.shape) != groups or t.dtype not in (torch.float16, torch.float32):
            raise QuantFormatError(f"{name} must be float16/float32 {groups}, got {t.dtype} {tuple(t.shape)}")
    if w.offsets is not None and w.fmt != "int4":
        raise QuantFormatError(f"only int4 has offsets, not {w.fmt}")
    if w.fmt.startswith("lut"):
        size = 16 if w.fmt == "lut4" else 256
        shapes = [(size,)] + ([(w.out_features, 16)] if size == 16 else [])
        if w.lut is None or w.lut.dtype != torch.float32 or tuple(w.lut.shape) not in shapes:
            got = None if w.lut is None else f"{w.lut.dtype} {tuple(w.lut.shape)}"
            raise QuantFormatError(f"{w.fmt} needs a float32 lut of shape {' or '.join(map(str, shapes))}, got {got}")
    elif w.lut is not None:
        raise QuantFormatError(f"{w.fmt} has no lut")


def codes_as_int(w: QuantizedWeight) -> torch.Tensor:
    """The codes one per input: int64 (out, in)."""
    return (unpack_int4(w.codes) if w.bits == 4 else w.codes).long()


def dequantize_ref(w: QuantizedWeight) -> torch.Tensor:
    """The weight as float32 (out, in), written as the formulas in the module doc."""
    q = codes_as_int(w)  # (out, in)
    scale = w.scales.float().repeat_interleave(w.group_size, dim=1)  # (out, in)
    if w.fmt == "int4":
        if w.offsets is None:
            return scale * (q - 8).float()
        return scale * q.float() + w.offsets.float().repeat_interleave(w.group_size, dim=1)
    if w.fmt == "int8":
        return scale * q.float()
    if w.lut.dim() == 2:  # a table per output row
        return scale * torch.gather(w.lut, 1, q)
    return scale * w.lut[q]
