"""`ssd_scan_states` (every token's state, for rollback) pinned to the sequential recurrence."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from hybridlm.nn.ssd import ssd_scan_ref, ssd_scan_states


def ssd_inputs(b=2, t=6, h=4, p=8, g=2, n=6, seed=0, dtype=torch.float64, state=True):
    """Random scan inputs as the mixer makes them: dt = softplus(.) > 0, A < 0."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa: E731
    x, B, C = r(b, t, h, p), r(b, t, g, n), r(b, t, g, n)
    dt = F.softplus(r(b, t, h) - 1.0)
    A = -torch.exp(r(h) * 0.5)
    return x, dt, A, B, C, r(b, h, p, n) if state else None


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("t", [1, 2, 6, 17])
@pytest.mark.parametrize("g, state", [(1, False), (2, True), (4, True)])
def test_states_scan_equals_sequential_at_every_token(t, g, state):
    x, dt, A, B, C, h0 = ssd_inputs(t=t, g=g, state=state)
    y, states = ssd_scan_states(x, dt, A, B, C, h0)
    y_ref, final_ref = ssd_scan_ref(x, dt, A, B, C, h0)
    assert states.shape == (x.shape[0], t, x.shape[2], x.shape[3], B.shape[-1])
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(states[:, -1], final_ref, atol=1e-12, rtol=1e-10)
    for i in range(t):  # the state after token i is the final state of the first i + 1 tokens
        _, prefix_final = ssd_scan_ref(x[:, :i + 1], dt[:, :i + 1], A, B[:, :i + 1], C[:, :i + 1], h0)
        torch.testing.assert_close(states[:, i], prefix_final, atol=1e-12, rtol=1e-10)


def test_states_scan_float32_is_float32_accurate():
    x, dt, A, B, C, h0 = ssd_inputs(t=9, g=2)
    y, states = ssd_scan_states(*(v.float() for v in (x, dt, A, B, C, h0)))
    y_ref, final_ref = ssd_scan_ref(x, dt, A, B, C, h0)
    assert y.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-5 and rel_err(states[:, -1], final_ref) < 1e-5
