"""The SSD scan of Mamba-2, three ways, pinned together by tests (tests/nn/test_ssd.py).

Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality" (arXiv:2405.21060). Per head, with a scalar A < 0 (the SSD
restriction, Sec. 3) and the step size dt (Δ, already through softplus and the limits):

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T        (the selective SSM recurrence, eq. (2), with
    y_t = h_t C_t                                       Mamba-2's discretisation of A and B)

  - `ssd_scan_ref`: that recurrence, one token after the other. Obviously right, O(T) Python steps.
  - `ssd_scan_chunked`: the same map as the matrix y = M x with M_ts = C_t^T B_s exp(sum_{s<k<=t} dt_k A) dt_s
    (the semiseparable form, Sec. 3.2), computed by its block decomposition (Sec. 6, Listing 1):
    quadratic "attention" inside chunks of L tokens, a state per chunk, the states passed from
    chunk to chunk by the recurrence, and their contribution read out per chunk. Memory: the
    output plus one chunk's (H, L, L) temporaries, linear in T.
  - `ssd_step`: one token of the recurrence from a saved state (decoding).

Shapes: x (B, T, H, P), dt (B, T, H), A (H,), B and C (B, T, G, N) with G groups shared by
H / G consecutive heads each (head h reads group h // (H / G)), state (B, H, P, N).
All three compute in float32 at least (float64 stays float64) and return y in that dtype; the
D skip connection and gating belong to the mixer (nn/mamba2.py), not to the scan.
"""

from __future__ import annotations

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # bf16/fp16 recurrences drift over thousands of steps; float64 is kept for reference tests
    return torch.promote_types(x.dtype, torch.float32)


def _check(x, dt, A, B, C) -> None:
    b, t, h, _ = x.shape
    g = B.shape[2]
    if dt.shape != (b, t, h) or A.shape != (h,) or B.shape[:2] != (b, t) or C.shape != B.shape:
        raise ValueError(f"ssd shapes: x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}, "
                         f"B {tuple(B.shape)}, C {tuple(C.shape)}")
    if h % g:
        raise ValueError(f"{h} heads cannot share {g} B/C groups evenly")


# exp(-80) ~ 2e-35: a decay below it is zero for float32 purposes. Clamping there keeps exp out of
# float32's denormal range, where it ran ~30x slower on this x86 CPU (measured: 81 ms vs 2.6 ms for
# 4M elements); strongly decaying heads put most of a chunk's (L, L) decays there.
_LOG_DECAY_FLOOR = -80.0


def _decay(log_decay: torch.Tensor) -> torch.Tensor:
    """exp of a sum of log-decays (<= 0). Positive inputs (above the diagonal of a chunk's decay
    matrix, which the caller masks) become exp(0) = 1, so nothing overflows, forward or backward."""
    return log_decay.clamp(min=_LOG_DECAY_FLOOR, max=0.0).exp()


def _initial(x: torch.Tensor, B: torch.Tensor, state: torch.Tensor | None, dtype) -> torch.Tensor:
    b, _, h, p = x.shape
    if state is None:
        return x.new_zeros(b, h, p, B.shape[-1], dtype=dtype)
    return state.to(dtype)


def ssd_scan_ref(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t, token by token.

    Returns y (B, T, H, P) and the final state (B, H, P, N). Mutates nothing.
    """
    _check(x, dt, A, B, C)
    dtype = _compute_dtype(x)
    rep = x.shape[2] // B.shape[2]
    x, dt, A = x.to(dtype), dt.to(dtype), A.to(dtype)
    B, C = B.to(dtype).repeat_interleave(rep, dim=2), C.to(dtype).repeat_interleave(rep, dim=2)  # (B, T, H, N)
    h = _initial(x, B, initial_state, dtype)
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A)  # (B, H)
        h = decay[:, :, None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((h * C[:, t, :, None, :]).sum(-1))  # (B, H, P)
    return torch.stack(ys, dim=1), h


def ssd_step(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the recurrence. state (B, H, P, N), x (B, H, P), dt (B, H), A (H,), B/C (B, G, N).

    Returns y (B, H, P) and the new state; `state` itself is not modified (the caller copies the new
    one into its cache slot).
    """
    dtype = _compute_dtype(x)
    rep = x.shape[1] // B.shape[1]
    x, dt = x.to(dtype), dt.to(dtype)
    B, C = B.to(dtype).repeat_interleave(rep, dim=1), C.to(dtype).repeat_interleave(rep, dim=1)  # (B, H, N)
    decay = torch.exp(dt * A.to(dtype))  # (B, H)
    h = decay[:, :, None, None] * state.to(dtype) + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    return (h * C[:, :, None, :]).sum(-1), h


def ssd_scan_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                     chunk_size: int, initial_state: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same map as `ssd_scan_ref` by SSD's block decomposition over chunks of `chunk_size` tokens.

    Returns y (B, T, H, P) and the final state (B, H, P, N); differentiable; mutates nothing.

    Chunks are visited in order, the state passed from one to the next (Sec. 6's state passing);
    inside a chunk everything is batched matrix products over all heads. Going chunk by chunk keeps
    the (L, L) temporaries of one chunk (H L^2 floats) in cache and memory linear in T: measured on
    a 2-core CPU at 4096 tokens, this ran ~2x faster than building them for every chunk at once.
    Decays are exp(cum_t - cum_s) of running sums inside a chunk, as mamba_ssm's Triton kernel takes
    them: off by ~eps * |cum| relatively, which a chunk's bounded length keeps small.
    """
    _check(x, dt, A, B, C)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    dtype = _compute_dtype(x)
    b, t, h, p = x.shape
    g, n = B.shape[2:]
    r = h // g  # heads per group: they share B and C, so they batch together as one wide matrix
    A = A.to(dtype).view(g, r)
    # the state per group as (N, r * P): one matmul serves the group's r heads against its B and C
    if initial_state is None:
        state = x.new_zeros(b, g, n, r * p, dtype=dtype)
    else:
        state = initial_state.to(dtype).view(b, g, r, p, n).permute(0, 1, 4, 2, 3).reshape(b, g, n, r * p)
    ys = []
    for start in range(0, t, chunk_size):
        end = min(start + chunk_size, t)
        length = end - start
        dtc = dt[:, start:end].to(dtype).view(b, length, g, r)
        # (B, G, r, L, P), made contiguous once: matmul copied the permuted view head by head
        xdt = (x[:, start:end].to(dtype).view(b, length, g, r, p) * dtc[..., None]).permute(0, 2, 3, 1, 4).contiguous()
        Bc, Cc = (v[:, start:end].to(dtype).transpose(1, 2).contiguous() for v in (B, C))  # (B, G, L, N)
        # (B, G, r, L): sum of a_k from the chunk start to t; contiguous, or the (L, L) products
        # below inherit its permuted strides and matmul copies them matrix by matrix
        cum = (dtc * A).cumsum(1).permute(0, 2, 3, 1).contiguous()

        # inside the chunk: y_t = sum_{s<=t} (C_t . B_s) exp(cum_t - cum_s) dt_s x_s
        scores = (Cc @ Bc.transpose(-1, -2)).tril()  # (B, G, L, L), zero above the diagonal
        decay = _decay(cum[..., :, None] - cum[..., None, :])  # (B, G, r, L, L); above the diagonal: masked
        y = (decay * scores[:, :, None]) @ xdt  # (B, G, r, L, P)
        # plus the state entering the chunk, decayed to t: exp(cum_t) C_t . h_start
        y_in = (Cc @ state).view(b, g, length, r, p) * _decay(cum).transpose(2, 3)[..., None]
        ys.append(y.permute(0, 3, 1, 2, 4) + y_in.permute(0, 2, 1, 3, 4))  # (B, L, G, r, P)

        # the state leaving the chunk: the entering one decayed over the whole chunk, plus
        # sum_s exp(cum_end - cum_s) dt_s x_s B_s^T
        weighted = (xdt * _decay(cum[..., -1:] - cum)[..., None]).transpose(2, 3).reshape(b, g, length, r * p)
        decay_all = _decay(cum[..., -1])[:, :, None, :, None]  # (B, G, 1, r, 1)
        state = (state.view(b, g, n, r, p) * decay_all).view(b, g, n, r * p) + Bc.transpose(-1, -2) @ weighted
    y = torch.cat(ys, dim=1).reshape(b, t, h, p)
    return y, state.view(b, g, n, r, p).permute(0, 1, 3, 4, 2).reshape(b, h, p, n)


def ssd_scan_states(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                    initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same map as `ssd_scan_ref`, also returning the state after every token: for short
    forwards whose state may be rolled back to any token (speculative verification, cache.py).

    Returns y (B, T, H, P) and states (B, T, H, P, N); states[:, -1] is the final state. Mutates
    nothing. Every state is written out, so the work is T states either way; this takes them all
    at once from the unrolled recurrence (Sec. 3.2),
        h_t = exp(cum_t) h_0 + sum_{s<=t} exp(cum_t - cum_s) dt_s x_s B_s^T,   cum_t = sum_{k<=t} dt_k A,
    a few batched products instead of T Python steps, at T^2 H P N multiply-adds: meant for the
    T ~ k + 1 <= 17 tokens of a verification, not a prompt.
    """
    _check(x, dt, A, B, C)
    dtype = _compute_dtype(x)
    rep = x.shape[2] // B.shape[2]
    x, dt = x.to(dtype), dt.to(dtype)
    B, C = B.to(dtype).repeat_interleave(rep, dim=2), C.to(dtype).repeat_interleave(rep, dim=2)  # (B, T, H, N)
    cum = (dt * A.to(dtype)).cumsum(1).transpose(1, 2)  # (B, H, T)
    t = x.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
    decay = _decay(cum[..., :, None] - cum[..., None, :]) * causal  # (B, H, T, S): exp(cum_t - cum_s), s <= t
    b, _, h, p = x.shape
    n = B.shape[-1]
    inputs = ((dt[..., None] * x)[..., None] * B[:, :, :, None, :]).transpose(1, 2)  # (B, H, S, P, N)
    # one (T, S) @ (S, P N) product per head
    states = (decay @ inputs.reshape(b, h, t, p * n)).view(b, h, t, p, n).transpose(1, 2)  # (B, T, H, P, N)
    h0 = _initial(x, B, initial_state, dtype)
    states = states + _decay(cum).transpose(1, 2)[..., None, None] * h0[:, None]
    y = (states @ C[..., None])[..., 0]  # (B, T, H, P)
    return y, states
