"""The native quantized matmul pinned to its references on every instruction set this CPU runs.

exact mode == `quant_linear_ref` (dequantize, F.linear) up to float32 summation order;
fast mode == `quant_linear_fast_ref` (Q8 activation blocks, then the same) up to float32 order;
dequantize == `dequantize_ref` bit for bit. Each case runs on every ISA in `supported_isas()`:
AVX-512 VNNI on CPUs that have it (Ice Lake), AVX2, and the portable C++ everywhere.
"""

from __future__ import annotations

import pytest
import torch

from hybridlm.kernels import qmatmul
from hybridlm.nn.quant import QuantizedWeight, dequantize_ref, pack_int4, quant_linear_fast_ref, quant_linear_ref

if not qmatmul.available():  # a missing compiler is tested in test_build.py; here it is a failure
    raise RuntimeError("the native quantized kernels did not build on this machine")

ALL_ISAS = qmatmul.ISAS
SUPPORTED = qmatmul.supported_isas()


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    """Each instruction set in turn (skipped where this CPU lacks it), restored afterwards."""
    if request.param not in SUPPORTED:
        pytest.skip(f"this CPU cannot run {request.param} (it runs {', '.join(SUPPORTED)})")
    before = qmatmul.isa()
    assert qmatmul.set_isa(request.param) == request.param
    yield request.param
    qmatmul.set_isa(before)


@pytest.fixture
def kernel_rows():
    """Every row count through the kernels (not the dequantize + GEMM path), restored afterwards."""
    with qmatmul.row_kernels_only():
        yield


def make_weight(fmt: str, n: int, k: int, group: int, scale_dtype=torch.float16, asym=False, lut_per_row=False,
                seed=0) -> QuantizedWeight:
    g = torch.Generator().manual_seed(seed)
    if fmt in ("int4", "lut4"):
        codes = pack_int4(torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8))
    else:
        codes = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    scales = (torch.rand(n, k // group, generator=g) * 0.05 + 0.005).to(scale_dtype)
    offsets = (torch.randn(n, k // group, generator=g) * 0.1).to(scale_dtype) if asym else None
    lut = None
    if fmt == "lut4":
        lut = torch.randn(n, 16, generator=g) if lut_per_row else torch.randn(16, generator=g)
    return QuantizedWeight(fmt, codes, scales, group, k, offsets, lut)


def run(x, w, act, bias=None, tiles=True):
    t = qmatmul.scale_tiles(w.scales, w.offsets) if tiles else None
    return qmatmul.qlinear(x, w.codes, w.scales, w.offsets, w.lut, bias, w.fmt, w.group_size, act, t)


def assert_near(got, want, rel=2e-6):
    """Within rel x the largest output: float32 summation order over a few hundred inputs."""
    assert got.shape == want.shape and got.dtype == want.dtype
    err = (got.double() - want.double()).abs().max().item()
    assert err <= rel * want.abs().max().item(), f"max error {err:.3g} vs scale {want.abs().max().item():.3g}"


CASES = [  # (fmt, asym, lut_per_row)
    ("int4", False, False), ("int4", True, False), ("int8", False, False), ("lut4", False, False),
    ("lut4", False, True),
]


@pytest.mark.parametrize("fmt,asym,lut_per_row", CASES)
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.float32])
def test_kernels_match_references(isa, kernel_rows, fmt, asym, lut_per_row, group, scale_dtype):
    # odd output rows: three tiles of 4 and 3 single rows; 1, 2 (a pair) and 5 (pairs and a single)
    # activation rows; inputs 384 = 3 x 128, so every group size has whole groups
    w = make_weight(fmt, 15, 384, group, scale_dtype, asym, lut_per_row)
    for m in (1, 2, 5):
        x = torch.randn(m, 384, generator=torch.Generator().manual_seed(m))
        assert_near(run(x, w, "exact"), quant_linear_ref(x, w, None))
        want_fast = quant_linear_ref(x, w, None) if fmt == "lut4" else quant_linear_fast_ref(x, w, None)
        assert_near(run(x, w, "fast"), want_fast)


def test_fast_mode_is_really_quantized(kernel_rows):
    """Fast differs from exact by the activations' rounding (and matches its own reference)."""
    w = make_weight("int4", 64, 256, 32, asym=True)
    x = torch.randn(3, 256)
    fast, exact = run(x, w, "fast"), run(x, w, "exact")
    assert (fast - exact).abs().max() > 1e-4 * exact.abs().max()
    assert (fast - exact).abs().max() < 0.05 * exact.abs().max()


def test_dequantize_is_bit_exact(isa):
    for fmt, asym, lut_per_row in CASES:
        for scale_dtype in (torch.float16, torch.float32):
            w = make_weight(fmt, 9, 256, 64, scale_dtype, asym, lut_per_row)
            got = qmatmul.qdequantize(w.codes, w.scales, w.offsets, w.lut, w.fmt, w.group_size)
            assert torch.equal(got, dequantize_ref(w)), (fmt, asym, scale_dtype)


def test_gemm_path_for_many_rows_matches_reference(isa):
    """From gemm_rows activation rows on, the weight is dequantized into tiles for a float GEMM."""
    w = make_weight("int4", 70, 256, 32, asym=True)
    bias = torch.randn(70)
    x = torch.randn(qmatmul.gemm_rows() + 3, 256)
    for act in ("exact", "fast"):  # both modes are exact here
        assert_near(run(x, w, act, bias), quant_linear_ref(x, w, bias))


def test_bias_shapes_dtypes_and_tiles_made_per_call(kernel_rows):
    w = make_weight("int8", 10, 128, 32)
    bias = torch.randn(10)
    x = torch.randn(2, 3, 128)  # (B, T, K) -> (B, T, N)
    y = run(x, w, "exact", bias, tiles=False)
    assert y.shape == (2, 3, 10)
    assert_near(y, quant_linear_ref(x, w, bias))
    xb = x.to(torch.bfloat16)
    yb = run(xb, w, "exact", bias)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), quant_linear_ref(xb.float(), w, bias), rtol=1e-2, atol=1e-2)
    assert run(torch.randn(0, 128), w, "fast").shape == (0, 10)


def test_results_do_not_depend_on_threads_or_chunks(kernel_rows):
    """Each output row is computed whole by one thread: 1 or 2 threads, one chunk or many, same bits."""
    w = make_weight("int4", 1001, 576, 32, asym=True)  # many chunks, and a partial tile at the end
    x = torch.randn(3, 576)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [run(x, w, act) for act in ("exact", "fast")]
        torch.set_num_threads(2)
        two = [run(x, w, act) for act in ("exact", "fast")]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert_near(one[0], quant_linear_ref(x, w, None))


def test_scale_tiles_layout():
    w = make_weight("int4", 10, 128, 32, asym=True)
    tiles = qmatmul.scale_tiles(w.scales, w.offsets)
    assert tiles.shape == (2, 4, 2, 4)  # 10 rows: 2 tiles of 4 (rows 8, 9 are read from the scales)
    for t in range(2):
        for j in range(4):
            assert torch.equal(tiles[t, :, 0, j], w.scales[4 * t + j])
            assert torch.equal(tiles[t, :, 1, j], w.offsets[4 * t + j])


@pytest.mark.parametrize("change,message", [
    (dict(group_size=16), "multiple of 32"),
    (dict(fmt="lut8"), "no native kernel for format 'lut8'"),
    (dict(x=torch.randn(2, 100)), "x must be"),
    (dict(codes=torch.zeros(4, 64, dtype=torch.int8)), "wrong dtype"),
    (dict(tiles=torch.zeros(3, 4, 1, 4, dtype=torch.float16)), "tiles must be"),
])
def test_bad_arguments_are_one_clear_error(change, message):
    w = make_weight("int4", 4, 128, 32)
    args = dict(x=torch.randn(1, 128), codes=w.codes, scales=w.scales, offsets=None, lut=None, bias=None,
                tiles=None, fmt="int4", group_size=32, act="fast") | change
    with pytest.raises(RuntimeError, match=message):
        torch.ops.hybridlm.qlinear(**args)


def test_isa_choice_and_lowering():
    best = qmatmul.isa()
    assert best == SUPPORTED[0] and "portable" in SUPPORTED
    try:
        assert qmatmul.set_isa("portable") == "portable"
        assert qmatmul.isa() == "portable"
        # asking for more than the CPU has gives the best it has
        assert qmatmul.set_isa("avx512_vnni") == SUPPORTED[0]
    finally:
        qmatmul.set_isa("auto")
    assert qmatmul.isa() == best
    with pytest.raises(ValueError, match="unknown instruction set"):
        qmatmul.set_isa("sse9")
