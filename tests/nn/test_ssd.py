"""The three SSD scans pinned together: chunked == sequential == step by step, forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from hybridlm.nn.ssd import ssd_scan_chunked, ssd_scan_ref, ssd_step


def ssd_inputs(b=2, t=37, h=4, p=8, g=2, n=6, seed=0, dtype=torch.float64, state=True):
    """Random scan inputs as the mixer makes them: dt = softplus(.) > 0, A < 0 (decays of ~0.3-0.9
    per step, so long-range terms neither vanish nor dominate)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa: E731
    x, B, C = r(b, t, h, p), r(b, t, g, n), r(b, t, g, n)
    dt = F.softplus(r(b, t, h) - 1.0)
    A = -torch.exp(r(h) * 0.5)
    h0 = r(b, h, p, n) if state else None
    return x, dt, A, B, C, h0


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest error relative to the reference's scale (float32 accuracy is relative to magnitude)."""
    return ((got.double() - want).abs().max() / want.abs().max()).item()


def stepwise(x, dt, A, B, C, h0):
    state = h0 if h0 is not None else x.new_zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[-1])
    ys = []
    for t in range(x.shape[1]):
        y, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t])
        ys.append(y)
    return torch.stack(ys, dim=1), state


@pytest.mark.parametrize("t, chunk", [(37, 8), (32, 8), (5, 16), (1, 4), (64, 64)])
@pytest.mark.parametrize("g, state", [(1, False), (2, True), (4, True)])
def test_chunked_equals_sequential_float64(t, chunk, g, state):
    x, dt, A, B, C, h0 = ssd_inputs(t=t, g=g, state=state)
    y_ref, h_ref = ssd_scan_ref(x, dt, A, B, C, h0)
    y, h = ssd_scan_chunked(x, dt, A, B, C, chunk, h0)
    assert y.shape == x.shape and h.shape == (2, 4, 8, 6) and y.dtype == torch.float64
    assert y_ref.abs().max() > 1.0
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)


def test_step_by_step_equals_sequential_float64():
    args = ssd_inputs(t=20)
    y_ref, h_ref = ssd_scan_ref(*args)
    y, h = stepwise(*args)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)


def test_float32_scans_within_1e5_of_the_float64_reference():
    """Nemotron-like proportions (P 16, N 32, 2 groups) over several 64-token chunks."""
    args64 = ssd_inputs(b=2, t=300, h=8, p=16, g=2, n=32, seed=3)
    y64, h64 = ssd_scan_ref(*args64)
    args32 = [a.float() for a in args64]
    results = {"ref": ssd_scan_ref(*args32), "chunked": ssd_scan_chunked(*args32[:5], 64, args32[5]),
               "step": stepwise(*args32)}
    for name, (y, h) in results.items():
        assert y.dtype == torch.float32, name
        assert rel_err(y, y64) < 1e-5, name
        assert rel_err(h, h64) < 1e-5, name


def test_bfloat16_inputs_compute_in_float32():
    x, dt, A, B, C, h0 = ssd_inputs(t=16)
    y, h = ssd_scan_chunked(x.bfloat16(), dt.bfloat16(), A, B.bfloat16(), C.bfloat16(), 8, h0.bfloat16())
    assert y.dtype == h.dtype == torch.float32


def test_chunked_prefill_continues_from_the_final_state():
    """Two scans with the state handed over == one scan over the whole (prefill, then more prefill)."""
    x, dt, A, B, C, h0 = ssd_inputs(t=40)
    y_all, h_all = ssd_scan_chunked(x, dt, A, B, C, 16, h0)
    y1, h1 = ssd_scan_chunked(x[:, :23], dt[:, :23], A, B[:, :23], C[:, :23], 16, h0)
    y2, h2 = ssd_scan_chunked(x[:, 23:], dt[:, 23:], A, B[:, 23:], C[:, 23:], 16, h1)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_all, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h2, h_all, rtol=1e-10, atol=1e-10)


def test_zero_dt_positions_leave_the_state_untouched():
    """What the mixer relies on for padding: dt = 0 and x = 0 make a step the identity."""
    x, dt, A, B, C, h0 = ssd_inputs(t=12)
    dt, x = dt.clone(), x.clone()
    dt[:, :5], x[:, :5] = 0.0, 0.0
    _, h_pad = ssd_scan_chunked(x, dt, A, B, C, 4, h0)
    _, h_cut = ssd_scan_chunked(x[:, 5:], dt[:, 5:], A, B[:, 5:], C[:, 5:], 4, h0)
    torch.testing.assert_close(h_pad, h_cut, rtol=1e-12, atol=1e-12)


def test_gradcheck_chunked_scan():
    x, dt, A, B, C, h0 = (a.requires_grad_() for a in ssd_inputs(b=1, t=7, h=2, p=2, g=1, n=3))
    assert torch.autograd.gradcheck(lambda *a: ssd_scan_chunked(*a[:5], 3, a[5]), (x, dt, A, B, C, h0))


def test_chunked_gradients_equal_sequential_gradients():
    inputs = ssd_inputs(b=2, t=19, h=4, p=3, g=2, n=5)
    grads = {}
    for name, scan in (("ref", lambda *a: ssd_scan_ref(*a)), ("chunked", lambda *a: ssd_scan_chunked(*a[:5], 4, a[5]))):
        leaves = [a.clone().requires_grad_() for a in inputs]
        y, h = scan(*leaves)
        weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        ((y * weights).sum() + h.square().sum()).backward()
        grads[name] = [leaf.grad for leaf in leaves]
    for got, want in zip(grads["chunked"], grads["ref"]):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_shape_errors():
    x, dt, A, B, C, _ = ssd_inputs(h=4, g=3)
    with pytest.raises(ValueError, match="share"):
        ssd_scan_chunked(x, dt, A, B, C, 8)
    x, dt, A, B, C, _ = ssd_inputs()
    with pytest.raises(ValueError, match="shapes"):
        ssd_scan_ref(x, dt[:, :-1], A, B, C)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_scan_chunked(x, dt, A, B, C, 0)
