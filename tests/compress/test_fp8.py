"""FP8 and FP4 emulation: every stored value is a representable number of the format times its scale,
and rounding is to the nearest one."""

import pytest
import torch

from hybridlm.compress.fp8 import FP8_DTYPES, fp4_table, fp8_max, fp8_quantize, fp8_table
from hybridlm.compress.lut import table_quantize
from hybridlm.nn.quant import dequantize_ref, unpack_int4


def _weights(out=32, n_in=128, seed=0):
    w = torch.randn(out, n_in, generator=torch.Generator().manual_seed(seed))
    w[0, 0] = 40.0
    return w


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("group", [32, 128])
def test_fp8_values_are_representable_and_round_to_nearest(fmt, group):
    w = _weights()
    q = fp8_quantize(w, fmt, group)
    assert q.fmt == "lut8" and q.codes.dtype == torch.uint8
    s = q.scales.float().repeat_interleave(group, 1)
    x = dequantize_ref(q) / s
    # representable: casting to the float8 type changes nothing
    assert torch.equal(x.to(FP8_DTYPES[fmt]).float(), x)
    assert x.abs().max() <= fp8_max(fmt)
    # nearest: the codes are torch's own round-to-nearest-even cast of w / s
    assert torch.equal(q.codes, (w / s).to(FP8_DTYPES[fmt]).view(torch.uint8))
    # and the error is within half a spacing of the format at that magnitude (3 or 2 mantissa bits)
    mantissa = {"e4m3": 3, "e5m2": 2}[fmt]
    rel = ((w / s - x).abs() / (w / s).abs().clamp(min=2.0 ** -6)).max()
    assert rel <= 2.0 ** -(mantissa + 1) * 1.0001


def test_fp8_table_has_no_nan_or_inf_and_matches_the_dtype():
    for fmt, dtype in FP8_DTYPES.items():
        table = fp8_table(fmt)
        assert table.shape == (256,) and torch.isfinite(table).all()
        finite = torch.isfinite(torch.arange(256, dtype=torch.uint8).view(dtype).float())
        assert torch.equal(table[finite], torch.arange(256, dtype=torch.uint8).view(dtype).float()[finite])


def test_fp4_e2m1_values_and_nearest_rounding():
    table = fp4_table()
    assert sorted(set(table.abs().tolist())) == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert table[3].item() == 1.5 and table[8 + 7].item() == -6.0  # sign bit 3, then exponent, mantissa
    w = _weights()
    q = table_quantize(w, table, 32)
    s = q.scales.float().repeat_interleave(32, 1)
    x = dequantize_ref(q) / s
    assert torch.isin(x, table).all()
    assert torch.equal(x, table[unpack_int4(q.codes).long()])
    dist = ((w / s)[..., None] - table).abs()
    assert torch.allclose((w / s - x).abs(), dist.min(-1).values)
    assert (w / s).abs().max() <= 6.0  # the group absmax maps to at most 6
