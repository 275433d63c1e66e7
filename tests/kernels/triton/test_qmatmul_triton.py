"""The Triton INT4/INT8 weight-only matmul (kernels/qmatmul_triton.py) against `quant_linear_ref`
(dequantize, then F.linear) in every layout it reads: symmetric and offset int4, int8, groups of
32 and more, one row (decode) and many, with and without bias."""

import pytest
import torch

from hybridlm.kernels import triton_support
from hybridlm.nn.quant.formats import QuantizedWeight, pack_int4
from hybridlm.nn.quant.linear import quant_linear_ref

from .conftest import DEVICE

qt = pytest.importorskip("hybridlm.kernels.qmatmul_triton") if triton_support.installed() else None


def _weight(fmt, group, offsets, n=40, k=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    if fmt == "int4":
        codes = pack_int4(torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g))
    else:
        codes = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    scales = (torch.rand(n, k // group, generator=g) * 0.1).half()
    offs = (torch.randn(n, k // group, generator=g) * 0.1).half() if offsets else None
    return QuantizedWeight(fmt, codes.to(DEVICE), scales.to(DEVICE), group, k, None if offs is None else offs.to(DEVICE))


@pytest.mark.parametrize("fmt, group, offsets, rows, bias", [
    ("int4", 32, False, 1, True),  # Q4_0 decode
    ("int4", 64, True, 19, False),  # Q4_1-like with offsets, prefill rows
    ("int8", 32, False, 1, False),  # Q8_0 decode
    ("int8", 128, False, 19, True),
])
def test_matches_dequantize_then_matmul(fmt, group, offsets, rows, bias):
    w = _weight(fmt, group, offsets)
    b = torch.randn(w.out_features, device=DEVICE) if bias else None
    x = torch.randn(rows, w.in_features, device=DEVICE)
    y = qt.qlinear_triton(x, w.codes, w.scales, w.offsets, b, fmt, group)
    ref = quant_linear_ref(x, w, b)
    torch.testing.assert_close(y, ref, atol=1e-4 * ref.abs().max().item(), rtol=1e-5)


def test_unsupported_format_is_named():
    w = _weight("int4", 32, False)
    with pytest.raises(ValueError, match="lut4 has no Triton kernel"):
        qt.qlinear_triton(torch.randn(1, 128, device=DEVICE), w.codes, w.scales, None, None, "lut4", 32)
