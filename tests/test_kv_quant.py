"""Int8 KV cache (kv_quant.py): the rounding bound; int8 cached decode equals an int8 one-shot
prefill on every storage kind (the quantization is per token, so the schedule cannot matter);
close to the float cache relative to the logit scale, with greedy tokens mostly equal; bytes."""

import pytest
import torch

from hybridlm.cache import Cache, CacheFullError
from hybridlm.generation.generate import generate
from hybridlm.generation.sampling import SamplingConfig
from hybridlm.kv_quant import Int8KVSlot, dequantize_kv, quantize_kv
from hybridlm.presets import get_preset
from tests.cache_helpers import prefill_and_stepwise, sharp_model, stepwise


pytestmark = pytest.mark.usefixtures("one_thread")



def test_quantize_kv_bound_shapes_and_zero_tokens():
    x = torch.randn(2, 3, 7, 16) * torch.rand(2, 3, 7, 1) * 5
    x[1, 2, 4] = 0
    q, s = quantize_kv(x)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (2, 3, 7, 1)
    back = dequantize_kv(q, s, torch.float32)
    assert ((back - x).abs() <= s / 2 + 1e-6).all()  # round to nearest, per head and token
    assert int(q.abs().amax()) == 127
    assert not back[1, 2, 4].any()


CASES = [
    ("llama-tiny", dict(kind="dynamic")),
    ("llama-tiny", dict(kind="static", max_len=40)),
    ("llama-tiny", dict(kind="static", max_len=40, full_view=True)),
    ("mistral-tiny", dict(kind="dynamic", window_only=True)),  # a ring of window - 1 int8 keys
    ("mistral-tiny", dict(kind="static", max_len=40, full_view=True)),
    ("nemotron-h-tiny", dict(kind="dynamic")),
]


@pytest.mark.parametrize("name, kwargs", CASES)
def test_int8_cached_decode_equals_int8_prefill(name, kwargs):
    _, _, one_shot, stepped, cache = prefill_and_stepwise(name, kwargs, "int8", seed=1)
    assert all(isinstance(s, Int8KVSlot) for s in cache.slots if s is not None and hasattr(s, "k"))
    torch.testing.assert_close(stepped, one_shot, atol=1e-9 * one_shot.abs().max().item(), rtol=0)


@pytest.mark.parametrize("name", ["llama-tiny", "nemotron-h-tiny"])
def test_int8_cache_is_close_to_the_float_cache(name):
    model = sharp_model(name)
    ids = torch.randint(0, model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = stepwise(model, ids, model.new_cache(2))
        got = stepwise(model, ids, model.new_cache(2, kv_dtype="int8"))
    scale = ref.std().item()
    # measured on these random (deliberately large-weight) models: mean 1.5% / 0.08% of the logit
    # spread, worst 13% / 0.7%, every argmax the same
    assert (got - ref).abs().mean().item() < 0.03 * scale
    assert (got - ref).abs().max().item() < 0.25 * scale
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree > 0.95


def test_greedy_generation_with_int8_kv_mostly_matches_float():
    model = sharp_model("llama-tiny")
    prompt = [5, 17, 300, 42, 9]
    sampling = SamplingConfig(max_new_tokens=32, temperature=0.0, ignore_eos=True)
    base = generate(model, [prompt], sampling, cache_kind="static")
    int8 = generate(model, [prompt], sampling, cache_kind="static", kv_dtype="int8")
    assert int8.stats.cache_bytes < 0.3 * base.stats.cache_bytes
    assert int8.tokens[0][:4] == base.tokens[0][:4]
    # a random model has near-ties, and one flipped token sends greedy decoding elsewhere for good;
    # so compare choices on the float model's own path: the int8 cache, fed the same tokens,
    # picks the same next token almost everywhere
    ids = torch.tensor([prompt + base.tokens[0]])
    with torch.no_grad():
        logits = stepwise(model, ids, model.new_cache(1, kind="static", max_len=ids.shape[1], kv_dtype="int8"))
    picks = logits[0, len(prompt) - 1:-1].argmax(-1).tolist()
    agree = sum(a == b for a, b in zip(picks, base.tokens[0])) / len(picks)
    assert agree >= 0.9


def test_growth_reorder_rollback_and_bytes():
    cfg = get_preset("llama-tiny")
    cache = Cache(cfg, 3, kind="dynamic", max_len=4, kv_dtype="int8")
    slot = next(s for s in cache.slots if s is not None)
    k = torch.randn(3, cfg.n_kv_heads, 6, cfg.head_dim)
    step = cache.plan(6)
    got_k, _ = slot.update(k, k * 2)
    cache.commit(step)
    assert slot.k.shape[2] >= 6 and slot.k_scale.shape[2] == slot.k.shape[2]  # scales grew with the codes
    torch.testing.assert_close(got_k, k, atol=k.abs().max().item() / 127, rtol=0)
    before = slot.k[2].clone(), slot.k_scale[2].clone()
    cache.reorder(torch.tensor([2, 0]))
    assert torch.equal(slot.k[0], before[0]) and torch.equal(slot.k_scale[0], before[1])
    cache.rollback(2)
    assert cache.length == 4
    per = 2 * (cfg.head_dim + 4) * cfg.n_kv_heads  # int8 codes + a float32 scale, K and V, per token
    assert slot.nbytes() == 2 * slot.k.shape[2] * per


def test_static_int8_cache_refuses_to_overflow_and_bad_dtype():
    model = sharp_model("llama-tiny")
    cache = model.new_cache(1, kind="static", max_len=4, kv_dtype="int8")
    with torch.no_grad(), pytest.raises(CacheFullError):
        model(torch.zeros(1, 5, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="int8"):
        model.new_cache(1, kv_dtype="fp4")
