"""RTN and the uniform grid: the per-element error bound, the granularities, and GGUF block identity."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize as gguf_dequantize, quantize as gguf_quantize

from hybridlm.compress.grid import UniformGrid, choose_params, dequantize_values, encode, expand_groups
from hybridlm.compress.rtn import rtn_quantize
from hybridlm.nn.quant import dequantize_ref, unpack_int4


def _weights(out=48, n_in=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, n_in, generator=g)
    w[3, 5] = 9.0  # an outlier, so groups differ in range
    w[7] *= 1e-3  # a row of tiny weights
    return w


@pytest.mark.parametrize("bits, symmetric", [(4, True), (4, False), (8, True)])
@pytest.mark.parametrize("group", [32, 64, 192])
def test_rtn_error_is_at_most_half_a_step_per_element(bits, symmetric, group):
    w = _weights()
    q = rtn_quantize(w, UniformGrid(bits, symmetric, group))
    s = q.scales.float().repeat_interleave(group, 1)
    err = (w - dequantize_ref(q)).abs()
    assert (err <= s / 2 * (1 + 1e-5) + 1e-12).all(), (err / s).max()
    # round to nearest: no other level of the grid is closer (a half step is the worst, not the usual)
    assert (err / s).mean() < 0.3


def test_per_tensor_is_one_scale_on_every_row_and_per_channel_one_per_row():
    w = _weights()
    t = rtn_quantize(w, UniformGrid(4, False, 192, per_tensor=True))
    assert t.scales.shape == (48, 1) and torch.unique(t.scales).numel() == 1
    assert torch.unique(t.offsets).numel() == 1
    c = rtn_quantize(w, UniformGrid(4, False, 192))
    assert c.scales.shape == (48, 1) and torch.unique(c.scales).numel() > 1
    # finer granularity, smaller error
    errors = [((w - dequantize_ref(rtn_quantize(w, UniformGrid(4, False, g, per_tensor=pt)))) ** 2).mean()
              for g, pt in ((192, True), (192, False), (64, False), (32, False))]
    assert errors == sorted(errors, reverse=True)


def test_codes_are_computed_against_the_stored_float16_scales():
    w = _weights()
    grid = UniformGrid(4, False, 32)
    scales, offsets = choose_params(w, grid)
    assert scales.dtype == offsets.dtype == torch.float16
    codes = encode(w, scales, offsets, grid)
    q = rtn_quantize(w, grid)
    assert torch.equal(unpack_int4(q.codes).long(), codes)
    s, m = expand_groups(scales, 32), expand_groups(offsets, 32)
    assert torch.equal(dequantize_values(codes, s, m, grid), dequantize_ref(q))
    # float16 offsets rounded down: every weight lies within [m, m + 15.5 s)
    assert (w >= m.float()).all() and (w < m.float() + 15.5 * s.float()).all()


def test_all_zero_group_stays_zero():
    w = torch.zeros(2, 64)
    w[1, 40] = 1.0
    for grid in (UniformGrid(4, True, 32), UniformGrid(4, False, 32), UniformGrid(8, True, 32)):
        deq = dequantize_ref(rtn_quantize(w, grid))
        assert torch.isfinite(deq).all()
        assert torch.equal(deq[0], torch.zeros(64)) and deq[1, 40] == pytest.approx(1.0, abs=0.07)


def _as_gguf_rows(q, qtype):
    """Our group-32 int4/int8 weight written as GGUF blocks: per block the float16 scale (and min), then
    the packed codes as they are (the nibble order is llama.cpp's)."""
    rows = []
    for r in range(q.out_features):
        blocks = []
        for b in range(q.in_features // 32):
            head = q.scales[r, b:b + 1].numpy().tobytes()
            if qtype == Q.Q4_1:
                head += q.offsets[r, b:b + 1].numpy().tobytes()
            width = 32 if qtype == Q.Q8_0 else 16
            blocks.append(head + q.codes[r, b * width:(b + 1) * width].numpy().tobytes())
        rows.append(np.frombuffer(b"".join(blocks), dtype=np.uint8))
    return np.stack(rows)


@pytest.mark.parametrize("qtype, grid", [(Q.Q4_0, UniformGrid(4, True, 32)), (Q.Q4_1, UniformGrid(4, False, 32)),
                                         (Q.Q8_0, UniformGrid(8, True, 32))])
def test_group_32_results_are_gguf_blocks_bit_for_bit(qtype, grid):
    w = _weights()
    q = rtn_quantize(w, grid)
    expected = dequantize_ref(q).numpy()
    got = gguf_dequantize(_as_gguf_rows(q, qtype), qtype)
    np.testing.assert_array_equal(got, expected)


def test_int8_has_no_asymmetric_grid():
    with pytest.raises(ValueError, match="symmetric only"):
        UniformGrid(8, False, 32)
    with pytest.raises(ValueError, match="4 or 8"):
        UniformGrid(3, True, 32)


def test_weights_on_a_q4_1_grid_come_back_exactly():
    # the SmolLM2 GGUF's float weights are Q4_1-dequantized: RTN asymmetric at group 32 finds each
    # block's own min and step again, so requantizing them changes nothing
    w = np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)
    on_grid = torch.from_numpy(gguf_dequantize(gguf_quantize(w, Q.Q4_1), Q.Q4_1))
    assert torch.equal(dequantize_ref(rtn_quantize(on_grid, UniformGrid(4, False, 32))), on_grid)
