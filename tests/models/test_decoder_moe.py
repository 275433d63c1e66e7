"""Decoders with mixture-of-experts blocks: presets, fast == reference, utilisation stats, cached decode."""

import pytest
import torch
from torch import nn

from hybridlm.config import ModelConfig
from hybridlm.models.decoder import Decoder
from hybridlm.nn.moe import MoEStats
from hybridlm.presets import get_preset


def _random(cfg: ModelConfig, std: float, seed: int = 0) -> Decoder:
    model = Decoder(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, std, generator=g)
    return model


def test_empty_pattern_with_experts_is_mixtral_layers():
    cfg = ModelConfig(n_layers=3, n_experts=4)
    assert cfg.pattern == "*E*E*E" and cfg.moe_d_ff == cfg.d_ff
    assert ModelConfig(n_layers=2, layer_pattern="*-*E", n_experts=4).blocks == ("attention", "mlp", "attention", "moe")


def test_moe_preset_round_trips_through_json_with_every_moe_field():
    cfg = get_preset("mixtral-tiny", moe_router="sigmoid", moe_renormalize=False, moe_d_ff=48,
                     moe_shared_expert_d_ff=32, moe_capacity_factor=1.25, moe_aux_loss_coef=0.03, moe_impl="ref")
    again = ModelConfig.from_json(cfg.to_json())
    assert again == cfg and again.blocks == cfg.blocks
    assert again.moe_capacity_factor == 1.25 and again.moe_shared_expert_d_ff == 32


def test_mixtral_presets_parameter_counts():
    tiny = Decoder(get_preset("mixtral-tiny"))
    assert 1_000_000 < sum(p.numel() for p in tiny.parameters()) < 5_000_000
    cfg = get_preset("mixtral-8x7b")
    with torch.device("meta"):  # the published shape, never allocated
        big = Decoder(cfg)
    total = sum(p.numel() for p in big.parameters())
    experts = sum(p.numel() for n, p in big.named_parameters() if ".experts." in n)
    active = total - experts * (cfg.n_experts - cfg.n_experts_per_token) // cfg.n_experts
    assert round(total / 1e9, 1) == 46.7 and round(active / 1e9, 1) == 12.9  # Jiang et al. 2024


@pytest.mark.parametrize("factor", [0.0, 1.0])
def test_fast_moe_matches_reference_model_with_padding(factor):
    cfg = get_preset("mixtral-tiny", n_layers=2, moe_capacity_factor=factor)
    fast = _random(cfg, std=0.1)
    ref = Decoder(cfg.replace(moe_impl="ref")).eval()
    ref.load_state_dict(fast.state_dict())
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :5] = 0
    stats_fast, stats_ref = MoEStats(), MoEStats()
    with torch.no_grad():
        got = fast(ids, attention_mask=mask, moe_stats=stats_fast)
        want = ref(ids, attention_mask=mask, moe_stats=stats_ref)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert len(stats_fast.layers) == 2 and [s.tokens for s in stats_fast.layers] == [19, 19]  # padding excluded
    assert torch.equal(stats_fast.routed, stats_ref.routed) and torch.equal(stats_fast.dropped, stats_ref.dropped)
    assert (stats_fast.dropped.sum() > 0) == (factor > 0)
    torch.testing.assert_close(stats_fast.aux_loss, stats_ref.aux_loss)


def test_stats_do_not_change_the_logits_and_train_every_router():
    model = _random(get_preset("mixtral-tiny"), std=0.1).train()
    ids = torch.randint(0, 1024, (2, 10))
    stats = MoEStats()
    logits = model(ids, moe_stats=stats)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10, 1024)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), logits)
    assert len(stats.layers) == 4 and all(int(s.routed.sum()) == 20 * 2 for s in stats.layers)
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten()) + 0.02 * stats.aux_loss
    loss.backward()
    for block in model.blocks[1::2]:
        assert block.mixer.router.weight.grad.abs().max() > 0
    assert not any(hasattr(b.mixer, "stats") or hasattr(b.mixer, "aux_loss") for b in model.blocks)


PROMPT_LENS = (40, 23)
N_STEPS = 12


def _check_cached_decode(model: Decoder, tol: float, cache_kind: str) -> None:
    """Prefill a left-padded batch, decode token by token; every logit equals the full forward of
    that row alone (the model is causal, so one forward over a row gives every prefix's logits)."""
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, model.config.vocab_size, (n + N_STEPS,), generator=g) for n in PROMPT_LENS]
    longest = max(PROMPT_LENS)
    ids = torch.zeros(2, longest, dtype=torch.long)
    mask = torch.zeros(2, longest, dtype=torch.long)
    for row, n in enumerate(PROMPT_LENS):
        ids[row, longest - n:], mask[row, longest - n:] = seqs[row][:n], 1
    with torch.no_grad():
        expected = [model(s[None])[0] for s in seqs]
        cache = model.new_cache(2, kind=cache_kind, max_len=longest + N_STEPS)
        prefill = model(ids, cache, attention_mask=mask)
        steps = torch.stack([model(torch.stack([s[n + i] for s, n in zip(seqs, PROMPT_LENS)])[:, None], cache)[:, 0]
                             for i in range(N_STEPS)], dim=1)
    for row, n in enumerate(PROMPT_LENS):
        got = torch.cat((prefill[row, longest - n:], steps[row]))
        torch.testing.assert_close(got, expected[row], rtol=tol, atol=tol)


@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_cached_decode_matches_full_recompute_without_capacity(cache_kind):
    cfg = get_preset("mixtral-tiny", moe_capacity_factor=0.0)
    _check_cached_decode(_random(cfg, std=0.05), tol=1e-5, cache_kind=cache_kind)
    # float64 with peaked weights: a slip in routing shows up far above rounding
    _check_cached_decode(_random(cfg, std=0.3).double(), tol=1e-10, cache_kind=cache_kind)


def test_cached_decode_with_a_capacity_that_never_binds():
    # capacity = factor * k * N / E >= N when factor >= E / k: no token can overflow, so the
    # capacity path runs but drops nothing, and decoding is still exact
    cfg = get_preset("mixtral-tiny", moe_capacity_factor=4.0)
    model = _random(cfg, std=0.3).double()
    _check_cached_decode(model, tol=1e-10, cache_kind="dynamic")
    stats = MoEStats()
    model(torch.randint(0, 1024, (2, 30)), moe_stats=stats)
    assert int(stats.dropped.sum()) == 0


def test_binding_capacity_makes_a_token_depend_on_its_batch():
    # the documented cost of Switch-style capacity: which tokens are dropped depends on the others
    # in the forward, so a cache (one token per step) cannot reproduce a full forward that dropped
    cfg = get_preset("mixtral-tiny", moe_capacity_factor=0.5)
    model = _random(cfg, std=0.3)
    ids = torch.randint(0, 1024, (1, 24), generator=torch.Generator().manual_seed(2))
    stats = MoEStats()
    with torch.no_grad():
        full = model(ids, moe_stats=stats)
        alone = model(ids[:, :12])
    assert int(stats.dropped.sum()) > 0
    assert (full[:, :12] - alone).abs().max() > 1e-3
