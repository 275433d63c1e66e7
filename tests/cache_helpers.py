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
