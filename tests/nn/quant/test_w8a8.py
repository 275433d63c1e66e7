"""W8A8Linear: the int8 x int8 -> int32 path pinned to its float32 fake-quant twin; activation
quantization per token and per tensor; state in buffers."""

import pytest
import torch
from torch import nn

from hybridlm.compress.grid import UniformGrid
from hybridlm.compress.rtn import rtn_quantize
from hybridlm.nn.quant import QuantFormatError, QuantLinear
from hybridlm.nn.quant.w8a8 import (
    W8A8Linear, quantize_per_tensor, quantize_per_token, set_w8a8_impl, w8a8_linear_int, w8a8_linear_ref,
)



pytestmark = pytest.mark.usefixtures("one_thread")

def _layer(n_in=96, n_out=40, seed=0, bias=True):
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out, bias=bias)
    return lin, rtn_quantize(lin.weight, UniformGrid(8, True, n_in))


def test_per_token_quantization_bound_and_symmetry():
    x = torch.randn(3, 7, 64) * torch.rand(3, 7, 1) * 10
    q, s = quantize_per_token(x)
    assert q.dtype == torch.int8 and s.shape == (3, 7, 1)
    assert int(q.abs().max()) == 127  # each token's largest entry lands on the grid's end
    assert ((q.float() * s - x).abs() <= s / 2 + 1e-6).all()  # round to nearest
    q_neg, _ = quantize_per_token(-x)
    assert torch.equal(q_neg, -q)  # [-127, 127]: no asymmetric -128
    zq, zs = quantize_per_token(torch.zeros(2, 8))
    assert not zq.any() and (zs == 1).all()


def test_per_tensor_quantization_saturates_beyond_the_calibrated_range():
    x = torch.tensor([[0.5, -1.0, 3.0]])
    q = quantize_per_tensor(x, torch.tensor(1.0 / 127))
    assert q.tolist() == [[64, -127, 127]]


@pytest.mark.parametrize("act", ["dynamic", "static"])
@pytest.mark.parametrize("shape", [(1, 96), (5, 96), (2, 33, 96)])
def test_int_matmul_matches_the_fake_quant_reference(act, shape):
    lin, q = _layer()
    x = torch.randn(*shape) * 3
    act_scale = (x.abs().max() / 127) if act == "static" else None
    input_scale = torch.rand(96) + 0.5
    for s_in in (None, input_scale):
        got = w8a8_linear_int(x, q, lin.bias, act, act_scale, s_in)
        ref = w8a8_linear_ref(x, q, lin.bias, act, act_scale, s_in)
        # the int32 sum is exact; the reference sums float products: they differ by float rounding only
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_int_path_accumulates_exactly_in_int32():
    lin, q = _layer(n_in=64, n_out=8, bias=False)
    x = torch.randn(4, 64)
    codes, s = quantize_per_token(x)
    exact = (codes.long() @ q.codes.long().T).double() * s.double() * q.scales.double().reshape(1, -1)
    got = w8a8_linear_int(x, q, None)
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=0)


def test_module_is_close_to_float_and_switches_impl():
    lin, q = _layer()
    m = W8A8Linear(q, lin.bias)
    assert isinstance(m, QuantLinear) and m.impl == "int"
    x = torch.randn(4, 96)
    with torch.no_grad():
        ref = lin(x)
        y_int = m(x)
        assert set_w8a8_impl(nn.Sequential(m), "ref") == 1
        y_ref = m(x)
    rel = ((y_int - ref).norm() / ref.norm()).item()
    assert rel < 0.02  # int8 x int8 on Gaussian data: well under 2%
    torch.testing.assert_close(y_int, y_ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="impl"):
        m.impl = "fast"


def test_state_lives_in_buffers():
    lin, q = _layer()
    m = W8A8Linear(q, lin.bias, act="static", act_scale=torch.tensor(0.02), input_scale=torch.rand(96))
    keys = set(m.state_dict())
    assert keys == {"codes", "scales", "bias", "act_scale", "input_scale"}
    rebuilt = W8A8Linear(q, lin.bias, act="static", act_scale=torch.tensor(1.0), input_scale=torch.ones(96))
    rebuilt.load_state_dict(m.state_dict())
    x = torch.randn(3, 96)
    assert torch.equal(rebuilt(x), m(x))
    assert m.quant_spec() == {"kind": "w8a8", "act": "static"}


def test_bad_construction_is_refused():
    lin, q = _layer()
    grouped = rtn_quantize(lin.weight, UniformGrid(8, True, 32))
    with pytest.raises(QuantFormatError, match="one scale per output row"):
        W8A8Linear(grouped)
    with pytest.raises(ValueError, match="static"):
        W8A8Linear(q, act="static")
    with pytest.raises(ValueError, match="input_scale"):
        W8A8Linear(q, input_scale=torch.ones(5))
