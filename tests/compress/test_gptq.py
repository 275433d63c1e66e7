"""GPTQ on single layers: lower output error than RTN with correlated inputs, exact RTN when the
Hessian is diagonal (so the act-order permutation is undone in storage), static groups."""

import pytest
import torch

from hybridlm.compress.config import CompressError
from hybridlm.compress.gptq import gptq_quantize, inverse_hessian_factor
from hybridlm.compress.grid import UniformGrid
from hybridlm.compress.rtn import rtn_quantize
from hybridlm.nn.quant import dequantize_ref, unpack_int4


def _correlated_inputs(n=2048, d=128, seed=0):
    """Inputs whose channels are strongly correlated (a low-rank mix plus noise), as in real layers."""
    basis = torch.randn(16, d, generator=torch.Generator().manual_seed(100))  # one distribution
    g = torch.Generator().manual_seed(seed)  # its samples
    scale = torch.logspace(0, 1, d)  # channels of different magnitude
    return (torch.randn(n, 16, generator=g) @ basis + 0.1 * torch.randn(n, d, generator=g)) * scale


def _output_error(x, w, q):
    return ((x @ w.T - x @ dequantize_ref(q).T) ** 2).mean().item()


@pytest.mark.parametrize("grid", [UniformGrid(4, False, 32), UniformGrid(4, True, 128), UniformGrid(8, True, 128)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_below_rtn_on_correlated_inputs(grid, act_order):
    x, x_test = _correlated_inputs(), _correlated_inputs(seed=1)
    w = torch.randn(96, 128, generator=torch.Generator().manual_seed(2))
    h = 2 * x.T @ x / x.shape[0]
    gptq = gptq_quantize(w, h, grid, act_order=act_order)
    rtn = rtn_quantize(w, grid)
    assert _output_error(x, w, gptq) < 0.7 * _output_error(x, w, rtn)
    assert _output_error(x_test, w, gptq) < 0.7 * _output_error(x_test, w, rtn)  # not only on its own data


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("grid", [UniformGrid(4, False, 32), UniformGrid(8, True, 64)])
def test_diagonal_hessian_gives_exactly_rtn_in_the_original_column_order(act_order, grid):
    # with independent inputs no error can be compensated, so GPTQ must reduce to RTN; distinct
    # diagonal values make act-order a real permutation, which storage must undo
    w = torch.randn(40, 128, generator=torch.Generator().manual_seed(3))
    h = torch.diag(torch.rand(128, generator=torch.Generator().manual_seed(4)) + 0.5)
    gptq, rtn = gptq_quantize(w, h, grid, act_order=act_order), rtn_quantize(w, grid)
    assert torch.equal(gptq.codes, rtn.codes) and torch.equal(gptq.scales, rtn.scales)


def test_act_order_groups_use_their_original_columns_scales():
    x = _correlated_inputs()
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(5))
    grid = UniformGrid(4, True, 32)
    q = gptq_quantize(w, 2 * x.T @ x / x.shape[0], grid, act_order=True)
    # static groups: the scales are RTN's, computed from the initial weights of each original group
    assert torch.equal(q.scales, rtn_quantize(w, grid).scales)
    codes = unpack_int4(q.codes).long()
    expected = q.scales.float().repeat_interleave(32, 1) * (codes - 8).float()
    assert torch.equal(dequantize_ref(q), expected)


def test_dead_inputs_are_zeroed_and_the_rest_still_quantized():
    x = _correlated_inputs(d=64)
    x[:, 10] = 0
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(6))
    q = gptq_quantize(w, 2 * x.T @ x / x.shape[0], UniformGrid(4, True, 32))
    assert (dequantize_ref(q)[:, 10] == 0).all()
    assert _output_error(x, w, q) < _output_error(x, w, rtn_quantize(w, UniformGrid(4, True, 32)))


def test_inverse_hessian_factor_is_the_upper_cholesky_of_the_damped_inverse():
    x = _correlated_inputs(n=512, d=32)
    h = 2 * x.T @ x / 512
    u = inverse_hessian_factor(h, 0.01).double()
    damped = h.double() + 0.01 * h.diagonal().mean().double() * torch.eye(32, dtype=torch.float64)
    torch.testing.assert_close(u.T @ u, torch.linalg.inv(damped), rtol=1e-4, atol=1e-6)
    assert torch.equal(u, u.triu())


def test_a_hessian_no_damping_rescues_is_a_clear_error():
    with pytest.raises(CompressError, match="not positive definite"):
        inverse_hessian_factor(-torch.eye(8), 0.01)
