import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q
from gguf.quants import dequantize as gguf_dequantize, quantize as gguf_quantize

from hybridlm.nn.quant import QuantFormatError, QuantizedWeight, QuantLinear, dequantize_ref, pack_int4, unpack_int4
from hybridlm.nn.quant.linear import quantize_linears


def test_pack_unpack_roundtrip_and_llama_cpp_nibble_order():
    q = torch.randint(0, 16, (3, 64), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.shape == (3, 32)
    assert torch.equal(unpack_int4(packed), q)
    # byte j of a 32-run holds input j (low nibble) and input j + 16 (high nibble)
    assert packed[0, 5].item() == q[0, 5].item() | (q[0, 21].item() << 4)
    assert packed[1, 16 + 3].item() == q[1, 32 + 3].item() | (q[1, 48 + 3].item() << 4)


def _from_gguf_blocks(raw: np.ndarray, qtype: Q, n_in: int) -> QuantizedWeight:
    """Split GGUF Q4_0 / Q4_1 / Q8_0 rows into codes and scales (the test's own, independent reading)."""
    block, size = GGML_QUANT_SIZES[qtype]
    b = torch.from_numpy(raw.reshape(raw.shape[0], n_in // block, size).copy())
    d = b[..., 0:2].contiguous().view(torch.float16)[..., 0]
    if qtype == Q.Q8_0:
        return QuantizedWeight("int8", b[..., 2:].contiguous().view(torch.int8).reshape(raw.shape[0], n_in), d, 32, n_in)
    if qtype == Q.Q4_0:
        return QuantizedWeight("int4", b[..., 2:].reshape(raw.shape[0], n_in // 2).contiguous(), d, 32, n_in)
    m = b[..., 2:4].contiguous().view(torch.float16)[..., 0]
    return QuantizedWeight("int4", b[..., 4:].reshape(raw.shape[0], n_in // 2).contiguous(), d, 32, n_in, offsets=m)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0])
def test_gguf_blocks_are_these_formats_bit_for_bit(qtype):
    w = np.random.default_rng(0).standard_normal((8, 128)).astype(np.float32)
    raw = gguf_quantize(w, qtype)
    expected = gguf_dequantize(raw, qtype)
    got = dequantize_ref(_from_gguf_blocks(raw, qtype, 128)).numpy()
    np.testing.assert_array_equal(got, expected)


def test_lut_formats_and_per_row_tables():
    codes = pack_int4(torch.randint(0, 16, (4, 64), dtype=torch.uint8))
    scales = torch.rand(4, 2, dtype=torch.float16) + 0.5
    lut = torch.linspace(-1, 1, 16)
    w = QuantizedWeight("lut4", codes, scales, 32, 64, lut=lut)
    expected = scales.float().repeat_interleave(32, 1) * lut[unpack_int4(codes).long()]
    torch.testing.assert_close(dequantize_ref(w), expected, rtol=0, atol=0)
    per_row = QuantizedWeight("lut4", codes, scales, 32, 64, lut=lut.repeat(4, 1) * torch.arange(1, 5)[:, None])
    torch.testing.assert_close(dequantize_ref(per_row)[2], expected[2] * 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(fmt="int3"), "unknown quantized format"),
    (dict(group_size=48), "does not divide"),
    (dict(group_size=16, scales=torch.ones(2, 4, dtype=torch.float16)), "multiple of 32"),
    (dict(codes=torch.zeros(2, 64, dtype=torch.uint8)), "codes must be"),
    (dict(scales=torch.ones(2, 3)), "scales must be"),
    (dict(lut=torch.ones(16)), "has no lut"),
])
def test_invalid_weights_name_the_problem(kwargs, message):
    base = dict(fmt="int4", codes=torch.zeros(2, 32, dtype=torch.uint8), scales=torch.ones(2, 2, dtype=torch.float16),
                group_size=32, in_features=64)
    with pytest.raises(QuantFormatError, match=message):
        QuantizedWeight(**{**base, **kwargs})


def test_quant_linear_ref_equals_linear_on_dequantized_weight_and_saves_as_buffers():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 8)
    q = torch.randint(-128, 128, (8, 64), dtype=torch.int8)
    w = QuantizedWeight("int8", q, torch.rand(8, 2, dtype=torch.float16), 32, 64)
    model = torch.nn.Sequential(lin)
    assert quantize_linears(model, lambda name, layer: w) == 1
    ql = model[0]
    assert isinstance(ql, QuantLinear)
    ql.set_kernel("ref")  # the native kernels are pinned to this reference in tests/kernels
    x = torch.randn(5, 64)
    torch.testing.assert_close(ql(x), torch.nn.functional.linear(x, dequantize_ref(w), lin.bias))
    assert set(ql.state_dict()) == {"codes", "scales", "bias"}
