"""Flash attention (kernels/flash_attn.py) against its explicit-softmax twin: values and gradients
for causal, sliding window, GQA/MQA, varlen and head dims 64/128; and clear errors."""

import pytest
import torch

from hybridlm.kernels import triton_support

from .conftest import DEVICE

fa = pytest.importorskip("hybridlm.kernels.flash_attn") if triton_support.installed() else None


def _tol(dtype):
    return dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)


def _check(b, h, h_kv, t, s, d, causal, window, dtype):
    torch.manual_seed(0)
    q = torch.randn(b, h, t, d, device=DEVICE, dtype=dtype, requires_grad=True)
    k = torch.randn(b, h_kv, s, d, device=DEVICE, dtype=dtype, requires_grad=True)
    v = torch.randn(b, h_kv, s, d, device=DEVICE, dtype=dtype, requires_grad=True)
    o = fa.flash_attn(q, k, v, causal=causal, window=window)
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), do)
    ref_in = [x.detach().double().requires_grad_() for x in (q, k, v)]
    o_ref = fa.flash_attn_ref(*ref_in, causal=causal, window=window)
    ref_grads = torch.autograd.grad(o_ref, ref_in, do.double())
    torch.testing.assert_close(o.double(), o_ref, **_tol(dtype))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, **_tol(dtype))


# (b, h, h_kv, t, s, d, causal, window): block edges (16-wide tiles under the interpreter) fall inside
# every sequence; s > t puts the queries at the end of the keys, as after a KV cache
FAST = [
    (1, 4, 2, 37, 37, 64, True, None),  # causal GQA, head dim 64
    (1, 4, 1, 29, 40, 32, True, 9),  # sliding window, MQA, queries after cached keys
    (1, 2, 2, 20, 33, 128, False, None),  # non-causal, head dim 128
]
SLOW = [
    (2, 8, 2, 70, 70, 128, True, None),
    (2, 4, 4, 65, 90, 64, True, 17),
    (1, 4, 2, 5, 64, 64, True, None),
    (3, 2, 1, 48, 48, 16, False, None),
]


@pytest.mark.parametrize("case", FAST)
def test_flash_matches_reference_float32(case):
    _check(*case, dtype=torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW)
def test_flash_matches_reference_more_shapes(case):
    _check(*case, dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else []))
def test_flash_half_precision_close_to_float32_reference(dtype):
    # Triton's interpreter multiplies bf16 tiles wrongly (NumPy has no bf16), so bf16 runs on CUDA only
    _check(1, 4, 2, 33, 33, 64, True, None, dtype)


def test_varlen_matches_each_sequence_alone():
    torch.manual_seed(1)
    lq, lk = [5, 17, 1], [5, 20, 9]
    cu_q = torch.tensor([0] + lq, device=DEVICE).cumsum(0).int()
    cu_k = torch.tensor([0] + lk, device=DEVICE).cumsum(0).int()
    q = torch.randn(sum(lq), 4, 32, device=DEVICE, requires_grad=True)
    k = torch.randn(sum(lk), 2, 32, device=DEVICE, requires_grad=True)
    v = torch.randn(sum(lk), 2, 32, device=DEVICE, requires_grad=True)
    o = fa.flash_attn_varlen(q, k, v, cu_q, cu_k, max(lq), max(lk), causal=True, window=7)
    o_ref = fa.flash_attn_varlen_ref(q, k, v, cu_q, cu_k, causal=True, window=7)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    do = torch.randn_like(o)
    for got, want in zip(torch.autograd.grad(o, (q, k, v), do), torch.autograd.grad(o_ref, (q, k, v), do)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_reference_agrees_with_the_models_attention():
    # the twin is the same math as nn/attention.py's attention_ref (bottom-right causal)
    from hybridlm.nn.attention import attention_ref

    torch.manual_seed(2)
    q, k, v = torch.randn(1, 4, 6, 16), torch.randn(1, 2, 10, 16), torch.randn(1, 2, 10, 16)
    torch.testing.assert_close(fa.flash_attn_ref(q, k, v, causal=True), attention_ref(q, k, v, None, True))


@pytest.mark.parametrize("bad, match", [
    (dict(d=24), "head dim"),
    (dict(h_kv=3), "share"),
    (dict(window=4, causal=False), "causal=True"),
])
def test_bad_inputs_are_clear_errors(bad, match):
    args = dict(h=4, h_kv=2, d=32, window=None, causal=True) | bad
    q = torch.randn(1, args["h"], 8, args["d"], device=DEVICE)
    k = torch.randn(1, args["h_kv"], 8, args["d"], device=DEVICE)
    with pytest.raises(ValueError, match=match):
        fa.flash_attn(q, k, k, causal=args["causal"], window=args["window"])


def test_wrong_device_says_where_it_runs(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # as on a machine without the interpreter: CUDA only
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="CUDA tensors"):
        fa.flash_attn(q, q, q)


def test_custom_op_has_a_fake_implementation():
    # torch.compile and the engine see one op: shapes known without running Triton
    with torch._subclasses.fake_tensor.FakeTensorMode():
        q, k = torch.empty(2, 4, 33, 64), torch.empty(2, 2, 40, 64)
        o, lse = torch.ops.hybridlm.flash_attn_fwd(q, k, k, None, None, 33, 40, True, 0, 0.125)
        assert o.shape == q.shape and lse.shape == (2, 4, 33)
        packed = torch.empty(50, 4, 64)
        o, lse = torch.ops.hybridlm.flash_attn_fwd(packed, packed, packed, torch.empty(3, dtype=torch.int32),
                                                   torch.empty(3, dtype=torch.int32), 30, 30, False, 0, 0.125)
        assert o.shape == packed.shape and lse.shape == (4, 50)
