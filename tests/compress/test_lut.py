"""NF4 and k-means tables: the published NF4 levels, lower MSE than int4 RTN on Gaussian weights,
codes that decode to table entries, and calibration weights that move the table."""

import pytest
import torch

from hybridlm.compress.grid import UniformGrid
from hybridlm.compress.lut import kmeans_quantize, nearest_code, nf4_table, table_quantize, weighted_kmeans_1d
from hybridlm.compress.rtn import rtn_quantize
from hybridlm.nn.quant import dequantize_ref, unpack_int4

# QLoRA's NF4 levels as published (bitsandbytes' functional.py, the paper's appendix E)
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]


def _gaussian(out=128, n_in=512, seed=0):
    return torch.randn(out, n_in, generator=torch.Generator().manual_seed(seed))


def _mse(w, q):
    return ((w - dequantize_ref(q)) ** 2).mean().item()


def test_nf4_table_from_its_definition_is_the_published_one():
    torch.testing.assert_close(nf4_table(), torch.tensor(PUBLISHED_NF4), rtol=0, atol=1e-6)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_nf4_beats_symmetric_int4_rtn_at_the_same_bits(group):
    # both store 4 bits and one float16 per group; asymmetric RTN spends a second float16 per group
    w = _gaussian()
    assert _mse(w, table_quantize(w, nf4_table(), group)) < 0.9 * _mse(w, rtn_quantize(w, UniformGrid(4, True, group)))


def test_nf4_codes_decode_to_scaled_table_entries_and_are_the_nearest():
    w = _gaussian(8, 64)
    q = table_quantize(w, nf4_table(), 64)
    codes = unpack_int4(q.codes).long()
    s = q.scales.float()
    assert torch.equal(dequantize_ref(q), s * nf4_table()[codes])
    dist = (w[..., None] / s[..., None] - nf4_table()).abs()  # (out, in, 16)
    assert torch.equal(dist.gather(-1, codes[..., None])[..., 0], dist.min(-1).values)


def test_kmeans_per_row_beats_int4_rtn_per_channel_and_nf4_per_row():
    w = _gaussian()
    km = _mse(w, kmeans_quantize(w, "row", 512))
    assert km < 0.7 * _mse(w, rtn_quantize(w, UniformGrid(4, False, 512)))
    assert km < _mse(w, table_quantize(w, nf4_table(), 512))  # Lloyd starts at NF4 and only improves


@pytest.mark.parametrize("group", [32, 64, 128])
def test_kmeans_per_tensor_beats_rtn_and_nf4_at_the_same_group(group):
    w = _gaussian()
    km = _mse(w, kmeans_quantize(w, "tensor", group))
    assert km < _mse(w, rtn_quantize(w, UniformGrid(4, True, group)))
    assert km < _mse(w, table_quantize(w, nf4_table(), group))
    if group >= 64:  # at 64+ it also beats asymmetric RTN, which has an extra float16 per group
        assert km < _mse(w, rtn_quantize(w, UniformGrid(4, False, group)))


def test_weighted_kmeans_spends_levels_where_the_weight_is():
    x = torch.cat([torch.linspace(-1, 0, 200), torch.linspace(0, 1, 200)])[None]
    heavy_right = torch.where(x > 0, 100.0, 1.0)
    cent = weighted_kmeans_1d(x, heavy_right)
    plain = weighted_kmeans_1d(x, torch.ones_like(x))
    assert (cent > 0).sum() > (plain > 0).sum()
    assert torch.equal(cent, cent.sort(dim=1).values)


def test_calibration_weights_lower_the_weighted_error():
    w = _gaussian(64, 256)
    channel = torch.ones(256)
    channel[:16] = 50.0  # inputs 0..15 carry most of the signal

    def weighted(q):
        return (((w - dequantize_ref(q)) ** 2) * channel).mean().item()

    assert weighted(kmeans_quantize(w, "row", 256, channel)) < weighted(kmeans_quantize(w, "row", 256))


def test_nearest_code_with_per_row_tables():
    table = torch.tensor([[0.0, 1.0, 2.0, 3.0], [-3.0, 0.0, 5.0, 10.0]])
    x = torch.tensor([[0.4, 2.6, 9.0], [-1.0, 6.0, 9.0]])
    assert nearest_code(x, table).tolist() == [[0, 3, 3], [1, 2, 3]]
