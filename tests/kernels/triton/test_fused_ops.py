"""Fused RMSNorm (+ residual), SwiGLU and RoPE (kernels/fused_ops.py) against their PyTorch twins,
forward and backward, and against the functions the models run today."""

import pytest
import torch
from torch.nn import functional as F

from hybridlm.kernels import triton_support
from hybridlm.nn.norms import rms_norm_ref
from hybridlm.nn.positions import apply_rope, apply_rope_ref, rope_cos_sin

from .conftest import DEVICE

fo = pytest.importorskip("hybridlm.kernels.fused_ops") if triton_support.installed() else None
TOL = dict(atol=1e-5, rtol=1e-5)


def _grads(outs, ins, seed=0):
    torch.manual_seed(seed)
    gs = [torch.randn_like(o) for o in outs]
    return torch.autograd.grad(outs, ins, gs), gs


@pytest.mark.parametrize("residual", [False, True])
def test_rmsnorm_matches_reference(residual):
    torch.manual_seed(0)
    x = torch.randn(3, 7, 48, device=DEVICE, requires_grad=True)  # 48: not a power of 2 (masked tail)
    r = torch.randn(3, 7, 48, device=DEVICE, requires_grad=True) if residual else None
    w = (1 + 0.1 * torch.randn(48, device=DEVICE)).requires_grad_()
    y, h = fo.rms_norm_triton(x, w, 1e-5, r)
    y_ref, h_ref = fo.rms_norm_residual_ref(x, w, 1e-5, r)
    torch.testing.assert_close(y, y_ref, **TOL)
    torch.testing.assert_close(h, h_ref, **TOL)
    torch.testing.assert_close(y_ref, rms_norm_ref(x + (0 if r is None else r), w, 1e-5), **TOL)
    ins = [x, w] + ([r] if residual else [])
    outs, outs_ref = ([y, h], [y_ref, h_ref]) if residual else ([y], [y_ref])
    got, gs = _grads(outs, ins)
    want = torch.autograd.grad(outs_ref, ins, gs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


def test_swiglu_matches_the_mlp_math():
    torch.manual_seed(1)
    h = torch.randn(2, 5, 2 * 40, device=DEVICE, requires_grad=True)
    y = fo.swiglu_triton(h)
    gate, up = h.split(40, dim=-1)
    y_ref = F.silu(gate) * up  # nn/mlp.py's GLU with the swiglu activation
    torch.testing.assert_close(y, y_ref, **TOL)
    (got,), gs = _grads([y], [h])
    torch.testing.assert_close(got, torch.autograd.grad(y_ref, h, gs)[0], **TOL)


def test_rope_matches_paper_rotation_on_a_strided_view():
    torch.manual_seed(2)
    qkv = torch.randn(2, 9, 10, 32, device=DEVICE, requires_grad=True)
    qk = qkv[:, :, :6]  # q and k heads of a fused projection: a view with a gap, as the model has
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 32, 2, device=DEVICE).float() / 32))
    pos = torch.arange(9, device=DEVICE)[None].expand(2, 9) + 3
    cos, sin = rope_cos_sin(inv_freq, pos, torch.float32)
    y = fo.rope_triton(qk, cos, sin)
    torch.testing.assert_close(y, apply_rope_ref(qk, pos, inv_freq), **TOL)
    y_model = apply_rope(qk, cos, sin)
    (got,), gs = _grads([y], [qkv])
    torch.testing.assert_close(got, torch.autograd.grad(y_model, qkv, gs)[0], **TOL)


def test_shape_errors_are_clear():
    x = torch.randn(2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="rms norm shapes"):
        fo.rms_norm_triton(x, torch.ones(4, device=DEVICE), 1e-5)
    with pytest.raises(ValueError, match="even"):
        fo.swiglu_triton(torch.randn(2, 7, device=DEVICE))
