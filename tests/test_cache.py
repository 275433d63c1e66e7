import pytest
import torch

from hybridlm.cache import CacheFullError
from tests.cache_helpers import sharp_model, stepwise


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
