"""The Mamba-2 SSD scan in Triton: the chunked scan in four kernels and the single-step update.

Same math, shapes and dtype rules as nn/ssd.py (Dao & Gu 2024, Sec. 6, Listing 1), whose
`ssd_scan_chunked` / `ssd_scan_ref` / `ssd_step` are the twins the tests pin these to:
x (B, T, H, P), dt (B, T, H) (after softplus and limits), A (H,) < 0, B and C (B, T, G, N) with head
h reading group h // (H / G), state (B, H, P, N). Chunks of L tokens, n_c = ceil(T / L):

  1. `_chunk_cumsum`   cum[b, h, c, l] = sum_{k <= l} dt_k A_h inside chunk c       (B, H, n_c, L)
  2. `_chunk_state`    S_c = sum_s exp(cum_last - cum_s) dt_s x_s B_s^T               (B, n_c, H, P, N)
                       the state a chunk would leave if it started from zero: one (P, L) x (L, N) product
  3. `_state_passing`  h_0 = initial;  h_{c+1} = exp(cum_last_c) h_c + S_c, sequential over chunks
                       only (n_c steps, not T); writes every chunk's entering state and the final one
  4. `_chunk_scan`     y_t = sum_{s <= t in chunk} (C_t . B_s) exp(cum_t - cum_s) dt_s x_s
                             + exp(cum_t) C_t . h_c                                  (the output)
                       the quadratic "attention" part inside a chunk plus the entering state's part

The single step (`_ssd_step`) is h' = exp(dt A) h + dt x B^T, y = h' C for one token per sequence,
each program one (sequence, head) pair: the decode path, reading and writing the state once.

The backward is not a Triton kernel here: `ssd_scan_triton` recomputes the forward with the PyTorch
chunked scan (nn/ssd.py) under autograd when gradients are asked for. Training on CUDA therefore
gets the Triton forward and PyTorch's backward (correct, not faster); a fused backward (mamba_ssm
has six kernels for it) is left for a session that can measure it.
"""

from __future__ import annotations

import torch

from . import triton_support

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = tl = None


if triton is not None:

    @triton.jit
    def _chunk_cumsum(DT, A, CUM, T, sdb, sdt, sdh, scb, sch, scc, L: tl.constexpr):
        b = tl.program_id(0)
        c = tl.program_id(1)
        h = tl.program_id(2)
        t = c * L + tl.arange(0, L)
        dt = tl.load(DT + b * sdb + t * sdt + h * sdh, mask=t < T, other=0.0).to(tl.float32)
        a = tl.load(A + h).to(tl.float32)
        cum = tl.cumsum(dt * a, 0)  # padding past T adds 0: the last entry is the whole chunk's decay
        tl.store(CUM + b * scb + h * sch + c * scc + tl.arange(0, L), cum)

    @triton.jit
    def _chunk_state(X, DT, BM, CUM, STATES, T, n_rep,
                     sxb, sxt, sxh, sdb, sdt, sdh, sbb, sbt, sbg, scb, sch, scc, ssb, ssc, ssh,
                     L: tl.constexpr, P: tl.constexpr, N: tl.constexpr, BLOCK_K: tl.constexpr):
        b = tl.program_id(0)
        c = tl.program_id(1)
        h = tl.program_id(2)
        offs_l = tl.arange(0, L)
        t = c * L + offs_l
        live = t < T
        offs_p = tl.arange(0, P)
        x = tl.load(X + b * sxb + t[:, None] * sxt + h * sxh + offs_p[None, :], mask=live[:, None], other=0.0)
        dt = tl.load(DT + b * sdb + t * sdt + h * sdh, mask=live, other=0.0).to(tl.float32)
        cum = tl.load(CUM + b * scb + h * sch + c * scc + offs_l)
        last = tl.load(CUM + b * scb + h * sch + c * scc + L - 1)
        w = tl.exp(tl.minimum(last - cum, 0.0)) * dt  # (L,)
        xw = tl.trans(x.to(tl.float32) * w[:, None])  # (P, L)
        # the state's N columns BLOCK_K at a time: (P, L) x (L, BLOCK_K) tiles, not one (L, N) operand
        for n0 in range(0, N, BLOCK_K):
            offs_n = n0 + tl.arange(0, BLOCK_K)
            bm = tl.load(BM + b * sbb + t[:, None] * sbt + (h // n_rep) * sbg + offs_n[None, :], mask=live[:, None],
                         other=0.0)
            state = tl.dot(xw, bm.to(tl.float32), input_precision="ieee")  # (P, BLOCK_K)
            tl.store(STATES + b * ssb + c * ssc + h * ssh + offs_p[:, None] * N + offs_n[None, :], state)

    @triton.jit
    def _state_passing(STATES, CUM, INIT, STATES_IN, FINAL, n_chunks,
                       ssb, ssc, ssh, scb, sch, scc, sib, sih, sfb, sfh,
                       L: tl.constexpr, PN: tl.constexpr, BLOCK: tl.constexpr, HAS_INIT: tl.constexpr):
        """STATES and STATES_IN share one layout (B, n_c, H, P, N); INIT and FINAL (B, H, P, N)."""
        b = tl.program_id(0)
        h = tl.program_id(1)
        offs = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
        live = offs < PN
        if HAS_INIT:
            s = tl.load(INIT + b * sib + h * sih + offs, mask=live, other=0.0).to(tl.float32)
        else:
            s = tl.zeros([BLOCK], dtype=tl.float32)
        for c in range(0, n_chunks):
            tl.store(STATES_IN + b * ssb + c * ssc + h * ssh + offs, s, mask=live)
            decay = tl.exp(tl.load(CUM + b * scb + h * sch + c * scc + L - 1))
            s = decay * s + tl.load(STATES + b * ssb + c * ssc + h * ssh + offs, mask=live, other=0.0)
        tl.store(FINAL + b * sfb + h * sfh + offs, s, mask=live)

    @triton.jit
    def _chunk_scan(X, DT, BM, CM, CUM, STATES_IN, Y, T, n_rep,
                    sxb, sxt, sxh, sdb, sdt, sdh, sbb, sbt, sbg, scb, sch, scc, ssb, ssc, ssh, syb, syt, syh,
                    L: tl.constexpr, P: tl.constexpr, N: tl.constexpr, BLOCK_K: tl.constexpr):
        b = tl.program_id(0)
        c = tl.program_id(1)
        h = tl.program_id(2)
        offs_l = tl.arange(0, L)
        t = c * L + offs_l
        live = t < T
        offs_p = tl.arange(0, P)
        g = h // n_rep
        x = tl.load(X + b * sxb + t[:, None] * sxt + h * sxh + offs_p[None, :], mask=live[:, None], other=0.0)
        dt = tl.load(DT + b * sdb + t * sdt + h * sdh, mask=live, other=0.0).to(tl.float32)
        cum = tl.load(CUM + b * scb + h * sch + c * scc + offs_l)
        # C_t . B_s (L, L) and C_t . h_c (L, P), the state dimension N taken BLOCK_K at a time so no
        # (L, N) operand has to sit in shared memory whole
        scores = tl.zeros([L, L], dtype=tl.float32)
        y_state = tl.zeros([L, P], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_K):
            offs_n = n0 + tl.arange(0, BLOCK_K)
            rows = b * sbb + t[:, None] * sbt + g * sbg + offs_n[None, :]
            cm = tl.load(CM + rows, mask=live[:, None], other=0.0).to(tl.float32)
            bm = tl.load(BM + rows, mask=live[:, None], other=0.0).to(tl.float32)
            s_in = tl.load(STATES_IN + b * ssb + c * ssc + h * ssh + offs_p[:, None] * N + offs_n[None, :])  # (P, K)
            scores += tl.dot(cm, tl.trans(bm), input_precision="ieee")
            y_state += tl.dot(cm, tl.trans(s_in), input_precision="ieee")
        # exp of min(., 0): above the diagonal the difference is positive and masked anyway
        decay = tl.exp(tl.minimum(cum[:, None] - cum[None, :], 0.0))
        keep = offs_l[:, None] >= offs_l[None, :]
        weights = tl.where(keep, scores * decay * dt[None, :], 0.0)
        y = tl.dot(weights, x.to(tl.float32), input_precision="ieee")  # (L, P)
        y += tl.exp(cum)[:, None] * y_state
        tl.store(Y + b * syb + t[:, None] * syt + h * syh + offs_p[None, :], y, mask=live[:, None])

    @triton.jit
    def _ssd_step(STATE, X, DT, A, BM, CM, Y, NEW, n_rep,
                  sstb, ssth, sxb, sxh, sdb, sdh, sbb, sbg, syb, syh, snb, snh,
                  P: tl.constexpr, N: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        g = h // n_rep
        offs_p = tl.arange(0, P)
        offs_n = tl.arange(0, N)
        grid = offs_p[:, None] * N + offs_n[None, :]
        state = tl.load(STATE + b * sstb + h * ssth + grid).to(tl.float32)
        x = tl.load(X + b * sxb + h * sxh + offs_p).to(tl.float32)
        dt = tl.load(DT + b * sdb + h * sdh).to(tl.float32)
        a = tl.load(A + h).to(tl.float32)
        bm = tl.load(BM + b * sbb + g * sbg + offs_n).to(tl.float32)
        cm = tl.load(CM + b * sbb + g * sbg + offs_n).to(tl.float32)
        state = tl.exp(dt * a) * state + (dt * x)[:, None] * bm[None, :]
        tl.store(NEW + b * snb + h * snh + grid, state)
        tl.store(Y + b * syb + h * syh + offs_p, tl.sum(state * cm[None, :], 1))


def supported(x: torch.Tensor, B: torch.Tensor, chunk_size: int) -> str | None:
    """Why the Triton scan cannot take these shapes (None if it can): P, N and L powers of 2 >= 16."""
    p, n = x.shape[-1], B.shape[-1]
    for name, v in (("head dim P", p), ("state size N", n), ("chunk size", chunk_size)):
        if v < 16 or v & (v - 1):
            return f"the Triton SSD scan needs {name} a power of 2 >= 16, got {v}"
    return None


def _ssd_forward(x, dt, A, B, C, chunk_size: int, initial_state):
    """The four kernels. Returns y (B, T, H, P) float32 and the final state (B, H, P, N) float32."""
    b, t, h, p = x.shape
    g, n = B.shape[2:]
    L = chunk_size
    n_c = triton.cdiv(t, L)
    rep = h // g
    f32 = dict(device=x.device, dtype=torch.float32)
    cum = torch.empty((b, h, n_c, L), **f32)
    states = torch.empty((b, n_c, h, p, n), **f32)
    states_in = torch.empty_like(states)
    final = torch.empty((b, h, p, n), **f32)
    y = torch.empty((b, t, h, p), **f32)
    A = A.float().contiguous()
    x, B, C = (v if v.stride(-1) == 1 else v.contiguous() for v in (x, B, C))
    init = final if initial_state is None else initial_state.float().contiguous()
    sx, sd, sb = (x.stride(0), x.stride(1), x.stride(2)), dt.stride(), (B.stride(0), B.stride(1), B.stride(2))
    if C.stride() != B.stride():
        C = C.contiguous()
        B = B.contiguous()
        sb = (B.stride(0), B.stride(1), B.stride(2))
    sc = cum.stride()[:3]
    ss = states.stride()[:3]
    interp = triton_support.interpreting()
    warps = 1 if interp else (8 if L >= 128 else 4)
    block_k = min(n, 16 if interp else 32)
    _chunk_cumsum[(b, n_c, h)](dt, A, cum, t, *sd, *sc, L=L)
    _chunk_state[(b, n_c, h)](x, dt, B, cum, states, t, rep, *sx, *sd, *sb, *sc, *ss, L=L, P=p, N=n,
                              BLOCK_K=block_k, num_warps=warps)
    block = min(1024, p * n)
    _state_passing[(b, h, triton.cdiv(p * n, block))](
        states, cum, init, states_in, final, n_c, *ss, *sc, init.stride(0), init.stride(1), final.stride(0),
        final.stride(1), L=L, PN=p * n, BLOCK=block, HAS_INIT=initial_state is not None)
    _chunk_scan[(b, n_c, h)](x, dt, B, C, cum, states_in, y, t, rep, *sx, *sd, *sb, *sc, *ss,
                             y.stride(0), y.stride(1), y.stride(2), L=L, P=p, N=n, BLOCK_K=block_k,
                             num_warps=warps)
    return y, final


class _SSDScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_size, initial_state):
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(x, dt, A, B, C, initial_state)
        return _ssd_forward(x, dt, A, B, C, chunk_size, initial_state)

    @staticmethod
    def backward(ctx, dy, dfinal):
        from ..nn.ssd import ssd_scan_chunked  # the PyTorch scan, differentiated by autograd

        x, dt, A, B, C, init = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(t.requires_grad) if t is not None else None
                  for t in (x, dt, A, B, C, init)]
        with torch.enable_grad():
            y, final = ssd_scan_chunked(*inputs[:5], ctx.chunk_size, inputs[5])
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad((y, final), wanted, (dy, dfinal), allow_unused=True))
        out = [next(grads) if t is not None and t.requires_grad else None for t in inputs]
        return out[0], out[1], out[2], out[3], out[4], None, out[5]


def _check_ready(x, B, chunk_size) -> None:
    triton_support.require(x, "the Triton SSD scan")
    reason = supported(x, B, chunk_size)
    if reason:
        raise ValueError(reason)


def ssd_scan_triton(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                    chunk_size: int, initial_state: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """`ssd_scan_chunked`'s contract (nn/ssd.py) in Triton: y (B, T, H, P) and the final state
    (B, H, P, N), both float32 (float64 inputs are not taken). Differentiable (backward in PyTorch,
    see the module doc). Mutates nothing."""
    from ..nn.ssd import _check

    _check(x, dt, A, B, C)
    _check_ready(x, B, chunk_size)
    if x.dtype == torch.float64:
        raise ValueError("the Triton SSD scan computes in float32; use ssd_scan_chunked for float64")
    return _SSDScan.apply(x, dt, A, B, C, chunk_size, initial_state)


def ssd_step_triton(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                    C: torch.Tensor, out_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`ssd_step`'s contract in Triton: state (B, H, P, N), x (B, H, P), dt (B, H), A (H,), B/C
    (B, G, N) -> y (B, H, P) float32 and the new state (float32). The new state is written into
    `out_state` when given (it may be `state` itself: each program reads its tile before writing
    it), else into a new tensor. Inference only (no autograd)."""
    _check_ready(x, B, 16)
    bsz, h, p = x.shape
    n = B.shape[-1]
    if state.shape != (bsz, h, p, n) or dt.shape != (bsz, h) or A.shape != (h,) or C.shape != B.shape:
        raise ValueError(f"ssd step shapes: state {tuple(state.shape)}, x {tuple(x.shape)}, dt {tuple(dt.shape)}, "
                         f"B {tuple(B.shape)}, C {tuple(C.shape)}")
    state_c = state if state.stride(-1) == 1 and state.stride(-2) == n else state.contiguous()
    new = torch.empty((bsz, h, p, n), device=x.device, dtype=torch.float32) if out_state is None else out_state
    if new.dtype != torch.float32 or new.stride(-1) != 1 or new.stride(-2) != n:
        raise ValueError("out_state must be a float32 tensor with (P, N) contiguous")
    if C.stride() != B.stride():
        B, C = B.contiguous(), C.contiguous()
    y = torch.empty((bsz, h, p), device=x.device, dtype=torch.float32)
    _ssd_step[(bsz, h)](state_c, x, dt, A, B, C, y, new, h // B.shape[1],
                        state_c.stride(0), state_c.stride(1), x.stride(0), x.stride(1), dt.stride(0), dt.stride(1),
                        B.stride(0), B.stride(1), y.stride(0), y.stride(1), new.stride(0), new.stride(1),
                        P=p, N=n, num_warps=1 if triton_support.interpreting() else 4)
    return y, new
