"""Models and stepping shared by the cache tests (test_cache.py, test_kv_quant.py)."""

import torch

from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset


def sharp_model(name, **overrides):
    """A seeded model with larger weights than the init, so logits are far from uniform."""
    torch.manual_seed(0)
    model = Decoder(get_preset(name, **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model


def stepwise(model, ids, cache, first=5):
    """Logits of a `first`-token prefill, then one token at a time through `cache`."""
    out = [model(ids[:, :first], cache)]
    for i in range(first, ids.shape[1]):
        out.append(model(ids[:, i:i + 1], cache))
    return torch.cat(out, dim=1)


def prefill_and_stepwise(name, kwargs, kv_dtype, seed):
    """(model, ids, one-shot prefill logits, stepwise logits, the stepwise cache) of a float64 `name`
    model whose caches store K/V as `kv_dtype`; both runs go through the same storage. float64:
    in float32 the last-bit differences between a prefill's and a step's matmuls can move a value
    across a rounding boundary of the storage's grid, and one code off is a real difference."""
    model = sharp_model(name, sliding_window=6) if name == "mistral-tiny" else sharp_model(name)
    model.to(torch.float64)
    ids = torch.randint(0, model.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        if kwargs.get("window_only"):  # a ring cannot prefill more than its window in one forward
            one_shot = stepwise(model, ids, model.new_cache(2, kind="dynamic", window_only=False, kv_dtype=kv_dtype))
        else:
            one_shot = model(ids, model.new_cache(2, kv_dtype=kv_dtype, **kwargs))
        cache = model.new_cache(2, kv_dtype=kv_dtype, **kwargs)
        stepped = stepwise(model, ids, cache)
    return model, ids, one_shot, stepped, cache
