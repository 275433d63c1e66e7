"""Cross-attention: the explicit reference and SDPA agree, and padding keys are ignored."""

import torch

from hybridlm.config import ModelConfig
from hybridlm.nn.cross_attention import CrossAttention


def _pair(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(family="seq2seq", d_model=32, n_heads=4, n_kv_heads=2, attn_impl="ref", **kw)
    ref = CrossAttention(cfg).eval()
    fast = CrossAttention(cfg.replace(attn_impl="sdpa")).eval()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def test_sdpa_matches_reference_with_padding_and_gqa():
    ref, fast = _pair()
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 4:] = False
    kv = ref.project_memory(memory)
    torch.testing.assert_close(fast(x, kv, mask), ref(x, kv, mask), atol=1e-5, rtol=1e-5)


def test_masked_source_tokens_do_not_matter():
    ref, _ = _pair()
    x, memory = torch.randn(1, 3, 32), torch.randn(1, 6, 32)
    mask = torch.tensor([[True] * 4 + [False] * 2])[:, None, None]
    out = ref(x, ref.project_memory(memory), mask)
    memory2 = memory.clone()
    memory2[:, 4:] = torch.randn(1, 2, 32) * 10
    torch.testing.assert_close(ref(x, ref.project_memory(memory2), mask), out)
    # and without the mask they would
    assert not torch.allclose(ref(x, ref.project_memory(memory2), None), ref(x, ref.project_memory(memory), None))
