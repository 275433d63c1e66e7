"""The native one-token decode step (kernels/decode_step.cpp) against its reference, the eager
Decoder on the same cache: logits per step, the cache it writes, every instruction set, and the
models it must refuse."""

from __future__ import annotations

import pytest
import torch

from hybridlm.compress import QuantizeConfig, quantize_model
from hybridlm.config import ModelConfig
from hybridlm.generation.generate import generate
from hybridlm.generation.native import NativeDecoder
from hybridlm.generation.sampling import SamplingConfig
from hybridlm.kernels import decode_step, qmatmul
from hybridlm.models.decoder import Decoder
from hybridlm.nn.quant import set_quant_modes

if not qmatmul.available():  # a missing compiler is tested in test_build.py; here it is a failure
    raise RuntimeError("the native quantized kernels did not build on this machine")


def tiny_model(seed=0, method="rtn", bits=4, group=32, symmetric=None, act="exact", **overrides) -> Decoder:
    """A 3-layer quantized Llama-style model (GQA 4:2, head dim 16) with logits far from flat."""
    torch.manual_seed(seed)
    fields = dict(vocab_size=96, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=512,
                  tie_embeddings=False, eos_token_id=None)
    fields.update(overrides)
    model = Decoder(ModelConfig(**fields)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15)
            else:
                p.uniform_(0.5, 1.5)
    quantize_model(model, QuantizeConfig(method=method, bits=bits, group_size=group, symmetric=symmetric,
                                         include_head=True))
    set_quant_modes(model, kernel="native", act_mode=act)
    return model


def decode_both(model, prompt_len=12, steps=24, cache_kwargs=None):
    """Prefill eagerly into two caches, then decode the same tokens eager and native:
    -> (eager logits, native logits) (steps, V), and the two caches."""
    native = NativeDecoder(model)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=g)
    feed = torch.randint(0, model.config.vocab_size, (steps,), generator=g)
    kwargs = cache_kwargs or {}
    with torch.inference_mode():
        ref_cache, cache = model.new_cache(1, **kwargs), model.new_cache(1, **kwargs)
        model(prompt, ref_cache)
        model(prompt, cache)
        ref, got = [], []
        for t in feed.tolist():
            ids = torch.tensor([[t]])
            ref.append(model(ids, ref_cache)[0, -1])
            got.append(native(ids, cache)[0, -1])
    return torch.stack(ref), torch.stack(got), ref_cache, cache


@pytest.fixture(params=qmatmul.ISAS)
def isa(request):
    if request.param not in qmatmul.supported_isas():
        pytest.skip(f"this CPU cannot run {request.param}")
    before = qmatmul.isa()
    qmatmul.set_isa(request.param)
    yield request.param
    qmatmul.set_isa(before)


@pytest.mark.parametrize("method,bits,symmetric", [("rtn", 4, False), ("rtn", 4, True), ("rtn", 8, True),
                                                   ("nf4", 4, None)])
def test_exact_mode_matches_the_eager_model(method, bits, symmetric):
    model = tiny_model(method=method, bits=bits, symmetric=symmetric)
    ref, got, ref_cache, cache = decode_both(model)
    # same kernels, same float32 math: only the summation order of norms and attention differs
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    assert cache.length == ref_cache.length and torch.equal(cache.next_pos, ref_cache.next_pos)
    n = ref_cache.length
    for a, b in zip(ref_cache.slots, cache.slots):
        if a is None:  # an MLP block
            continue
        torch.testing.assert_close(b.k[:, :, :n], a.k[:, :, :n], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.v[:, :, :n], a.v[:, :, :n], rtol=1e-5, atol=1e-5)


def test_every_instruction_set(isa):
    ref, got, _, _ = decode_both(tiny_model(), steps=12)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("kv_dtype", ["float", "float16"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_long_contexts_split_between_threads(isa, threads, kv_dtype):
    # head dim 64 takes the x86 units' vector attention (16 does not); 200 cached positions are
    # split into parts per KV head across the threads and merged (decode_step.cpp, merge_parts);
    # a float16 cache (llama.cpp's K/V type) is written and read as the eager slot does
    model = tiny_model(seed=3, d_model=384, n_heads=6, n_kv_heads=3, n_layers=2)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ref, got, ref_cache, cache = decode_both(model, prompt_len=200, steps=6, cache_kwargs={"kv_dtype": kv_dtype})
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    n = ref_cache.length
    for a, b in zip(ref_cache.slots, cache.slots):
        if a is not None:
            assert b.k.dtype == (torch.float16 if kv_dtype == "float16" else torch.float32)
            # float16: one rounding step (2^-10 relative) where the float32 values straddle a boundary
            rtol = 2.0 ** -10 if kv_dtype == "float16" else 1e-5
            for x, y in ((b.k, a.k), (b.v, a.v)):
                torch.testing.assert_close(x[:, :, :n], y[:, :, :n], rtol=rtol, atol=1e-5 * y.abs().max().item())


def test_biases_mha_and_mqa():
    for heads in (4, 1):  # MHA, MQA
        model = tiny_model(seed=2, n_kv_heads=heads, qkv_bias=True, attn_out_bias=True, mlp_bias=True)
        ref, got, _, _ = decode_both(model, steps=8)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_fast_mode_runs_the_same_int8_activations():
    """Fast mode quantizes each matmul's input to int8 blocks: a rounding flip from a different
    summation order upstream can move a logit, so the bound is looser, and the tokens agree."""
    model = tiny_model(act="fast")
    ref, got, _, _ = decode_both(model, steps=16)
    assert (got - ref).abs().max() <= 0.02 * ref.abs().max()
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_cache_grows_past_its_first_capacity():
    """A dynamic cache starts at 256 slots or max_len: the step makes room as eager decoding does."""
    model = tiny_model()
    ref, got, ref_cache, cache = decode_both(model, prompt_len=6, steps=20, cache_kwargs={"max_len": 8})
    assert cache.slots[0].k.shape[2] >= 26
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_generate_through_the_native_step_gives_the_eager_tokens():
    model = tiny_model()
    sampling = SamplingConfig(max_new_tokens=24, temperature=0.0, ignore_eos=True)
    prompts = [[3, 14, 15, 92, 65, 35]]
    eager = generate(model, prompts, sampling)
    native = generate(NativeDecoder(model), prompts, sampling)
    assert native.tokens == eager.tokens


def test_calls_it_does_not_cover_run_the_eager_model():
    model = tiny_model()
    native = NativeDecoder(model)
    with torch.inference_mode():
        batch = torch.tensor([[1, 2, 3], [4, 5, 6]])
        assert torch.equal(native(batch, model.new_cache(2)), model(batch, model.new_cache(2)))
        cache = model.new_cache(1, kv_dtype="int8")
        assert not native.covers(torch.tensor([[1]]), cache, None)
        assert native.covers(torch.tensor([[1]]), model.new_cache(1), None)


@pytest.mark.parametrize("change,reason", [
    ({"sliding_window": 8}, "sliding window"),
    ({"qk_norm": True}, "normalises q and k"),
    ({"mlp": "gelu"}, "not SwiGLU"),
    ({"position": "alibi"}, "not RoPE"),
])
def test_models_outside_its_scope_are_refused_with_the_reason(change, reason):
    model = tiny_model(**change)
    assert reason in decode_step.unsupported_reason(model)
    assert not decode_step.available(model)
    with pytest.raises(ValueError, match=reason):
        decode_step.build_plan(model)


def test_a_float_model_is_refused():
    model = Decoder(ModelConfig(vocab_size=96, d_model=64, n_layers=1, n_heads=4, d_ff=96)).eval()
    assert "quantized layer" in decode_step.unsupported_reason(model)


def test_bad_step_arguments_are_clear_errors():
    model = tiny_model()
    plan = decode_step.build_plan(model)
    cache = model.new_cache(1, max_len=4)
    ks = [s.k for s in cache.slots if s is not None]
    vs = [s.v for s in cache.slots if s is not None]
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        plan.step(1000, 0, ks, vs)
    with pytest.raises(RuntimeError, match="past the cache's capacity"):
        plan.step(1, 4, ks, vs)
    with pytest.raises(RuntimeError, match="one K and one V cache"):
        plan.step(1, 0, ks[:1], vs[:1])
