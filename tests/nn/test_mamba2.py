"""The Mamba-2 mixer: prefill then decode == full forward, padding never reaches the state, the
cache slot behaves (reorder, bytes), the gated norm is grouped, and gradients flow."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from hybridlm.cache import Cache, MambaSlot
from hybridlm.models.decoder import Decoder
from hybridlm.nn.mamba2 import GatedRMSNorm, Mamba2
from hybridlm.presets import get_preset


def tiny_cfg(**overrides):
    return get_preset("nemotron-h-tiny", **overrides)


def random_mixer(cfg=None, seed=0) -> Mamba2:
    torch.manual_seed(seed)
    mixer = Mamba2(cfg or tiny_cfg()).eval()
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
            elif name == "dt_bias":
                p.uniform_(-2.0, 0.5)
            else:
                p.add_(torch.randn_like(p) * 0.1)
    return mixer


def random_model(name="nemotron-h-tiny", seed=0, **overrides) -> Decoder:
    torch.manual_seed(seed)
    model = Decoder(get_preset(name, **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    return model


def new_slot(cfg, batch, dtype=torch.float32):
    return MambaSlot(Cache(cfg, batch, dtype=dtype), cfg)


def test_prefill_then_steps_equal_the_full_forward_at_every_step():
    cfg = tiny_cfg()
    mixer = random_mixer(cfg)
    x = torch.randn(3, 45, cfg.d_model)
    with torch.no_grad():
        full = mixer(x)
        slot = new_slot(cfg, 3)
        outs = [mixer(x[:, :20], slot)]
        outs += [mixer.step(x[:, i:i + 1], slot) for i in range(20, 45)]
    assert full.abs().max() > 0.1
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=2e-5, rtol=1e-4)


def test_chunked_prefill_equals_one_prefill_and_leaves_the_same_state():
    cfg = tiny_cfg()
    mixer = random_mixer(cfg)
    x = torch.randn(2, 50, cfg.d_model)
    with torch.no_grad():
        one, two = new_slot(cfg, 2), new_slot(cfg, 2)
        whole = mixer(x, one)
        parts = torch.cat([mixer(x[:, :2], two), mixer(x[:, 2:31], two), mixer(x[:, 31:], two)], dim=1)
    torch.testing.assert_close(parts, whole, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(two.conv, one.conv)
    torch.testing.assert_close(two.ssm, one.ssm, atol=1e-5, rtol=1e-4)


def test_reference_scan_mixer_equals_chunked_mixer():
    chunked = random_mixer(tiny_cfg())
    ref = Mamba2(tiny_cfg(ssd_impl="ref")).eval()
    ref.load_state_dict(chunked.state_dict())
    x = torch.randn(2, 37, 128)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), chunked(x), atol=2e-5, rtol=1e-4)


def test_left_padding_leaves_no_trace_in_the_states():
    """Padded positions hold garbage embeddings; neither the conv nor the SSM state may see them."""
    cfg = tiny_cfg()
    mixer = random_mixer(cfg)
    x = torch.randn(1, 12, cfg.d_model)
    padded = torch.cat([torch.randn(1, 5, cfg.d_model) * 10, x], dim=1)
    valid = torch.tensor([[False] * 5 + [True] * 12])
    with torch.no_grad():
        alone, with_pad = new_slot(cfg, 1), new_slot(cfg, 1)
        want = mixer(x, alone)
        got = mixer(padded, with_pad, valid)[:, 5:]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(with_pad.conv, alone.conv, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(with_pad.ssm, alone.ssm, atol=1e-5, rtol=1e-5)
        # and the next decoded token agrees
        nxt = torch.randn(1, 1, cfg.d_model)
        torch.testing.assert_close(mixer.step(nxt, with_pad), mixer.step(nxt, alone), atol=1e-5, rtol=1e-5)
        # without the mask the padding does leak (the test above can fail)
        leaky = new_slot(cfg, 1)
        mixer(padded, leaky)
        assert (leaky.ssm - alone.ssm).abs().max() > 1e-3


def test_slot_shapes_bytes_and_reorder():
    cfg = tiny_cfg()
    cache = Cache(cfg, 3, dtype=torch.bfloat16)
    kinds = [type(s).__name__ if s is not None else None for s in cache.slots]
    assert kinds == ["MambaSlot", None, "MambaSlot", "KVSlot", None, "MambaSlot", None]
    slot = cache.slots[0]
    assert slot.conv.shape == (3, cfg.mamba_conv_dim, cfg.d_conv - 1) and slot.conv.dtype == torch.bfloat16
    assert slot.ssm.shape == (3, 8, 32, 16) and slot.ssm.dtype == torch.float32  # recurrent state stays fp32
    mamba_bytes = 3 * (3 * 320 * 3 * 2 + 3 * 8 * 32 * 16 * 4)
    kv = cache.slots[3]
    assert cache.nbytes() == mamba_bytes + kv.nbytes()
    slot.ssm.copy_(torch.arange(3.0)[:, None, None, None])
    cache.reorder(torch.tensor([2, 0]))
    assert slot is cache.slots[0] and slot.ssm.shape[0] == 2
    assert slot.ssm[:, 0, 0, 0].tolist() == [2.0, 0.0]


def test_reorder_then_decode_equals_decoding_those_rows_alone():
    """Beam search's use of the cache: rows moved whole, with their recurrent state."""
    model = random_model()
    ids = torch.randint(0, 1024, (3, 9))
    nxt = torch.randint(0, 1024, (2, 1))
    with torch.no_grad():
        cache = model.new_cache(3)
        model(ids, cache)
        cache.reorder(torch.tensor([2, 0]))
        got = model(nxt, cache)
        want = model(torch.cat([ids[[2, 0]], nxt], dim=1))[:, -1:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kwargs", [dict(kind="dynamic"), dict(kind="static", max_len=48)])
def test_hybrid_model_cached_decoding_equals_full_recompute(kwargs):
    model = random_model()
    ids = torch.randint(0, 1024, (2, 40))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, **kwargs)
        outs = [model(ids[:, :13], cache)] + [model(ids[:, i:i + 1], cache) for i in range(13, 40)]
        bytes_after = cache.nbytes()
        model(ids[:, :1], cache)
    assert full.abs().max() > 1.0
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-4, rtol=1e-4)
    assert cache.nbytes() == bytes_after or kwargs["kind"] == "dynamic"  # static: nothing grows


def test_gated_norm_is_grouped_and_gated_after():
    norm = GatedRMSNorm(8, group_size=4, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 9.0))
    x, z = torch.randn(2, 8), torch.randn(2, 8)
    h = (x * F.silu(z)).view(2, 2, 4)
    want = (h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()).view(2, 8) * torch.arange(1.0, 9.0)
    torch.testing.assert_close(norm(x, z), want)
    ungrouped = GatedRMSNorm(8, group_size=8, eps=1e-6)
    assert (ungrouped(x, z) * torch.arange(1.0, 9.0) - want).abs().max() > 1e-3


def test_training_forward_backward_reaches_every_parameter():
    model = random_model()
    model.train()
    ids = torch.randint(0, 1024, (2, 24))
    loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_initialisation_follows_mamba_ssm():
    cfg = tiny_cfg(mamba_n_heads=64)
    mixer = Mamba2(cfg)
    a = mixer.A_log.exp()
    assert a.min() >= 1.0 and a.max() <= 16.0
    dt = F.softplus(mixer.dt_bias)
    assert dt.min() >= cfg.mamba_dt_min * 0.999 and dt.max() <= cfg.mamba_dt_max * 1.001
    assert torch.equal(mixer.D, torch.ones(64))


def test_bfloat16_model_decodes_close_to_float32():
    model = random_model()
    ids = torch.randint(0, 1024, (2, 30))
    with torch.no_grad():
        want = model(ids)
        half = model.to(torch.bfloat16)
        cache = half.new_cache(2)
        assert cache.slots[0].ssm.dtype == torch.float32 and cache.slots[0].conv.dtype == torch.bfloat16
        got = torch.cat([half(ids[:, :20], cache)] + [half(ids[:, i:i + 1], cache) for i in range(20, 30)], dim=1)
    assert got.dtype == torch.bfloat16
    assert ((got.float() - want).abs().max() / want.abs().max()) < 0.05
