import pytest
import torch

from hybridlm.cache import CacheFullError
from tests.cache_helpers import prefill_and_stepwise, sharp_model, stepwise


CASES = [
    ("llama-tiny", dict(kind="dynamic")),
    ("llama-tiny", dict(kind="static", max_len=40)),
    ("llama-tiny", dict(kind="static", max_len=40, full_view=True)),
    ("mistral-tiny", dict(kind="dynamic", window_only=True)),
    ("mistral-tiny", dict(kind="dynamic", window_only=False)),
    ("mistral-tiny", dict(kind="static", max_len=40, full_view=True)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, kwargs", CASES)
def test_cached_decoding_equals_full_recompute(name, kwargs, dtype):
    model = sharp_model(name, sliding_window=6) if name == "mistral-tiny" else sharp_model(name)
    model.to(dtype)
    ids = torch.randint(0, 1024, (2, 30))
    with torch.no_grad():
        full = model(ids)
        cached = stepwise(model, ids, model.new_cache(2, **kwargs))
    # float64 shows the algebra is exact; float32 differs only by summation order (1e-5 of the logit scale)
    tol = 1e-12 if dtype == torch.float64 else 1e-5 * full.abs().max().item()
    torch.testing.assert_close(cached, full, atol=tol, rtol=0)


def test_window_cache_keeps_only_the_window():
    model = sharp_model("mistral-tiny", sliding_window=6)
    cache = model.new_cache(1, kind="dynamic", window_only=True)
    with torch.no_grad():
        stepwise(model, torch.randint(0, 1024, (1, 50)), cache)
    cfg = model.config
    per_slot = 2 * cfg.n_kv_heads * 5 * cfg.head_dim * 4  # window - 1 keys and values, float32
    assert cache.nbytes() == cfg.n_attention_layers * per_slot
    assert len(cache) == 50


def test_dynamic_cache_grows_by_doubling():
    model = sharp_model("llama-tiny")
    cache = model.new_cache(1, kind="dynamic", max_len=16)
    with torch.no_grad():
        model(torch.randint(0, 1024, (1, 16)), cache)
        assert cache.slots[0].k.shape[2] == 16
        model(torch.randint(0, 1024, (1, 1)), cache)
    assert cache.slots[0].k.shape[2] == 32


def test_static_cache_refuses_to_overflow():
    model = sharp_model("llama-tiny")
    cache = model.new_cache(1, kind="static", max_len=8)
    with torch.no_grad(), pytest.raises(CacheFullError, match="8 tokens"):
        model(torch.randint(0, 1024, (1, 9)), cache)


def test_reorder_moves_rows():
    model = sharp_model("llama-tiny")
    ids = torch.randint(0, 1024, (2, 6))
    cache = model.new_cache(2)
    with torch.no_grad():
        model(ids, cache)
        cache.reorder(torch.tensor([1, 1]))
        nxt = model(torch.tensor([[3], [3]]), cache)
        alone = model(torch.cat([ids[1:], torch.tensor([[3]])], dim=1))[:, -1:]
    torch.testing.assert_close(nxt[0:1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nxt[1:2], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, kwargs", CASES)
def test_float16_kv_cached_decode_equals_float16_prefill(name, kwargs):
    # K/V rounded to float16 as they are stored: a cached decode attends over exactly what a
    # one-shot prefill through the same storage attends over
    model, ids, one_shot, stepped, cache = prefill_and_stepwise(name, kwargs, "float16", seed=3)
    with torch.no_grad():
        ref = stepwise(model, ids, model.new_cache(2, **kwargs))
    slots = [s for s in cache.slots if s is not None]
    assert all(s.k.dtype == torch.float16 and s.v.dtype == torch.float16 for s in slots)
    torch.testing.assert_close(stepped, one_shot, atol=1e-9 * one_shot.abs().max().item(), rtol=0)
    # and float16 storage is close to float64's, yet not equal to it (the rounding is real)
    diff = (stepped - ref).abs().max().item()
    assert 0 < diff < 1e-2 * ref.abs().max().item()


def test_float16_kv_halves_the_bytes_and_grows():
    model = sharp_model("llama-tiny")
    full, half = model.new_cache(1, kind="dynamic"), model.new_cache(1, kind="dynamic", kv_dtype="float16")
    ids = torch.randint(0, 1024, (1, 300))
    with torch.no_grad():
        model(ids, full)
        model(ids, half)
    assert sum(s.nbytes() for s in half.slots if s) * 2 == sum(s.nbytes() for s in full.slots if s)
    with pytest.raises(ValueError, match="KV cache dtype"):
        model.new_cache(1, kv_dtype="float8")
