"""The Triton SSD scan and step (kernels/ssd_triton.py) against nn/ssd.py's recurrence: outputs,
final states and gradients, with groups, an initial state and a partial last chunk."""

import pytest
import torch

from hybridlm.kernels import triton_support
from hybridlm.nn.ssd import ssd_scan_ref, ssd_step

from .conftest import DEVICE

st = pytest.importorskip("hybridlm.kernels.ssd_triton") if triton_support.installed() else None


def _inputs(b=2, t=45, h=4, p=16, g=2, n=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, h, p, generator=gen)
    dt = torch.rand(b, t, h, generator=gen) * 0.5
    A = -torch.rand(h, generator=gen) * 3 - 0.1
    B, C = torch.randn(b, t, g, n, generator=gen), torch.randn(b, t, g, n, generator=gen)
    s0 = torch.randn(b, h, p, n, generator=gen)
    return [v.to(DEVICE).requires_grad_() for v in (x, dt, A, B, C, s0)]


@pytest.mark.parametrize("with_state", [False, True])
def test_scan_matches_the_recurrence_values_and_gradients(with_state):
    x, dt, A, B, C, s0 = _inputs()
    init = s0 if with_state else None
    y, final = st.ssd_scan_triton(x, dt, A, B, C, 16, init)  # 45 tokens: chunks of 16, 16, 13
    ins = [x, dt, A, B, C] + ([s0] if with_state else [])
    ref_in = [v.detach().double().requires_grad_() for v in ins]
    y_ref, f_ref = ssd_scan_ref(*ref_in[:5], ref_in[5] if with_state else None)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final.double(), f_ref, atol=1e-4, rtol=1e-4)
    gy, gf = torch.randn_like(y), torch.randn_like(final)
    got = torch.autograd.grad((y, final), ins, (gy, gf))
    want = torch.autograd.grad((y_ref, f_ref), ref_in, (gy.double(), gf.double()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, atol=1e-3, rtol=1e-3)


def test_scan_in_one_call_equals_two_calls_passing_the_state():
    # state size 32: the kernels take N in two blocks of 16 here
    x, dt, A, B, C, _ = [v.detach() for v in _inputs(t=48, n=32, seed=3)]
    torch.testing.assert_close(st.ssd_scan_triton(x, dt, A, B, C, 16)[0], ssd_scan_ref(x, dt, A, B, C)[0],
                               atol=1e-4, rtol=1e-4)
    y, final = st.ssd_scan_triton(x, dt, A, B, C, 16)
    y1, s1 = st.ssd_scan_triton(x[:, :20], dt[:, :20], A, B[:, :20], C[:, :20], 16)
    y2, s2 = st.ssd_scan_triton(x[:, 20:], dt[:, 20:], A, B[:, 20:], C[:, 20:], 16, s1)
    torch.testing.assert_close(torch.cat((y1, y2), 1), y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s2, final, atol=1e-4, rtol=1e-4)


def test_step_matches_reference_and_can_update_in_place():
    x, dt, A, B, C, s0 = [v.detach() for v in _inputs(t=1, seed=4)]
    y_ref, s_ref = ssd_step(s0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    y, s = st.ssd_step_triton(s0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, s_ref, atol=1e-5, rtol=1e-5)
    state = s0.clone()
    st.ssd_step_triton(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], out_state=state)
    torch.testing.assert_close(state, s_ref, atol=1e-5, rtol=1e-5)


def test_unsupported_sizes_are_named():
    x, dt, A, B, C, _ = [v.detach() for v in _inputs(p=16, n=16)]
    with pytest.raises(ValueError, match="chunk size"):
        st.ssd_scan_triton(x, dt, A, B, C, 24)
    assert "head dim P" in st.supported(torch.zeros(1, 1, 1, 12), B, 16)
