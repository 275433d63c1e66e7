import torch

from hybridlm.analysis.memory import count_parameters, memory_summary
from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset


def test_parameter_count_matches_the_module():
    for name in ("gpt2-tiny", "llama-tiny", "qwen3-tiny"):
        cfg = get_preset(name)
        assert count_parameters(cfg) == sum(p.numel() for p in Decoder(cfg).parameters())


def test_published_sizes():
    # GPT-2 small is 124.4M parameters with tied embeddings; SmolLM2-135M is 134.5M
    assert round(count_parameters(get_preset("gpt2-124m")) / 1e6, 1) == 124.4
    assert round(count_parameters(get_preset("smollm2-135m")) / 1e6, 1) == 134.5


def test_kv_bytes_match_a_real_cache():
    cfg = get_preset("llama-tiny")
    model = Decoder(cfg)
    cache = model.new_cache(1, kind="static", max_len=64)
    with torch.no_grad():
        model(torch.randint(0, 1024, (1, 64)), cache)
    assert cache.nbytes() == memory_summary(cfg).kv_bytes_per_token * 64
