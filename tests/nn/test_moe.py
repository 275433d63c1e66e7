import pytest
import torch

from hybridlm.config import ConfigError, ModelConfig
from hybridlm.models.decoder import Block
from hybridlm.nn.moe import MoE, MoEStats, expert_capacity, route

D = 16


def _cfg(**overrides) -> ModelConfig:
    base = dict(vocab_size=64, d_model=D, n_heads=2, d_ff=24, n_layers=1, n_experts=4, n_experts_per_token=2)
    return ModelConfig(**{**base, **overrides})


def _moe(seed: int = 0, **overrides) -> MoE:
    torch.manual_seed(seed)
    moe = MoE(_cfg(**overrides))
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.5)
    return moe


def _pair(**overrides) -> tuple[MoE, MoE]:
    fast = _moe(**overrides)
    ref = MoE(_cfg(**overrides, moe_impl="ref"))
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _run(moe: MoE, x: torch.Tensor, mask=None):
    stats = MoEStats()
    y = moe(x, mask, stats)
    (layer,) = stats.layers
    return y, layer


VARIANTS = {
    "softmax-top2-renorm": dict(),
    "softmax-top1-switch": dict(n_experts_per_token=1, moe_renormalize=False),
    "softmax-top2-raw": dict(moe_renormalize=False),
    "sigmoid-top2": dict(moe_router="sigmoid"),
    "sigmoid-top3-shared": dict(moe_router="sigmoid", n_experts_per_token=3, moe_shared_expert_d_ff=8),
    "relu2-experts": dict(mlp="relu2", mlp_bias=True),
}
CAPACITIES = [0.0, 0.5, 1.0]  # no limit; drops; drops only where the load is uneven


@pytest.mark.parametrize("factor", CAPACITIES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fast_dispatch_matches_per_token_reference(variant, factor):
    fast, ref = _pair(**VARIANTS[variant], moe_capacity_factor=factor)
    x = torch.randn(3, 7, D, generator=torch.Generator().manual_seed(1))
    y_fast, s_fast = _run(fast, x)
    y_ref, s_ref = _run(ref, x)
    torch.testing.assert_close(y_fast, y_ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(s_fast.routed, s_ref.routed) and torch.equal(s_fast.dropped, s_ref.dropped)
    torch.testing.assert_close(s_fast.aux_loss, s_ref.aux_loss)
    assert s_fast.tokens == 21 and int(s_fast.routed.sum()) == 21 * fast.k
    if factor == 0.5:  # at most n_experts x capacity choices are served
        assert int(s_fast.dropped.sum()) >= 21 * fast.k - 4 * expert_capacity(21, fast.k, 4, factor) > 0
    if factor == 0.0:
        assert int(s_fast.dropped.sum()) == 0

    # and the same gradients, through the gates and the load-balancing loss
    for moe, y, s in ((fast, y_fast, s_fast), (ref, y_ref, s_ref)):
        (y.square().mean() + s.aux_loss).backward()
    for (name, p_fast), p_ref in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert fast.router.weight.grad.abs().max() > 0


def _forced_router(moe: MoE, logits: torch.Tensor) -> torch.Tensor:
    """Inputs x = one-hot rows, router weight columns = the wanted logits: token t gets logits[t]."""
    n = logits.shape[0]
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:, :n] = logits.t()
    return torch.eye(n, D)[None]  # (1, N, D)


@pytest.mark.parametrize("impl", ["fast", "ref"])
def test_switch_capacity_six_tokens_three_experts(impl):
    # Switch: capacity = tokens / experts x factor = 6 / 3 x 1 = 2; every token wants expert 0
    assert expert_capacity(6, 1, 3, 1.0) == 2
    cfg = dict(n_experts=3, n_experts_per_token=1, moe_renormalize=False, moe_capacity_factor=1.0, moe_impl=impl)
    moe = _moe(**cfg)
    x = _forced_router(moe, torch.tensor([[4.0, 0.0, 0.0]] * 6))
    y, s = _run(moe, x)
    assert s.routed.tolist() == [6, 0, 0] and s.dropped.tolist() == [4, 0, 0]
    gate = torch.softmax(torch.tensor([4.0, 0.0, 0.0]), -1)[0]
    torch.testing.assert_close(y[0, :2], gate * moe.experts[0](x[0, :2]))  # the first two, in token order
    assert y[0, :2].abs().min() > 0
    assert torch.equal(y[0, 2:], torch.zeros(4, D))

    # in a residual block a dropped token passes through unchanged
    block = Block("moe", _cfg(**cfg))
    block.mixer.load_state_dict(moe.state_dict())
    out = block(x, None, None)
    assert torch.equal(out[0, 2:], x[0, 2:]) and not torch.equal(out[0, :2], x[0, :2])

    # a shared expert has no capacity: dropped tokens still get it
    shared = _moe(**cfg, moe_shared_expert_d_ff=8)
    x = _forced_router(shared, torch.tensor([[4.0, 0.0, 0.0]] * 6))
    torch.testing.assert_close(_run(shared, x)[0][0, 2:], shared.shared(x[0, 2:]))


@pytest.mark.parametrize("impl", ["fast", "ref"])
def test_first_choices_are_served_before_second_choices(impl):
    # capacity 1 per expert; token 0 wants experts (0, 1), token 1 wants (1, 0): each expert serves its
    # first-choice token, and both second choices are dropped although token 0 comes first
    assert expert_capacity(4, 2, 4, 0.5) == 1
    moe = _moe(n_experts=4, moe_capacity_factor=0.5, moe_impl=impl)
    logits = torch.tensor([[3.0, 2.0, -5, -5], [2.0, 3.0, -5, -5], [-5, -5, 3.0, 2.0], [-5, -5, 2.0, 3.0]])
    x = _forced_router(moe, logits)
    y, s = _run(moe, x)
    assert s.routed.tolist() == [2, 2, 2, 2] and s.dropped.tolist() == [1, 1, 1, 1]
    gates, experts, _ = route(logits, 2, "softmax", True)
    for t in range(4):
        first = experts[t, 0]
        torch.testing.assert_close(y[0, t], gates[t, 0] * moe.experts[first](x[0, t:t + 1])[0])


def test_mixtral_router_softmax_top2_renormalised():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    gates, experts, probs = route(logits, 2, "softmax", True)
    assert experts.tolist() == [[1, 2]]
    p = torch.softmax(logits, -1)[0]
    torch.testing.assert_close(gates[0], torch.stack([p[1], p[2]]) / (p[1] + p[2]))
    torch.testing.assert_close(probs, torch.softmax(logits, -1))
    gates, experts, probs = route(logits, 2, "sigmoid", True)
    s = torch.sigmoid(logits[0])
    torch.testing.assert_close(gates[0], torch.stack([s[1], s[2]]) / (s[1] + s[2]))
    torch.testing.assert_close(probs[0], s / s.sum())


def test_load_balancing_loss_is_one_when_balanced_and_e_when_collapsed():
    moe = _moe(n_experts=4, n_experts_per_token=1)
    balanced = _forced_router(moe, torch.eye(4).repeat(2, 1) * 1e-3)  # two tokens each, P near uniform
    assert abs(_run(moe, balanced)[1].aux_loss.item() - 1.0) < 1e-2
    collapsed = _forced_router(moe, torch.tensor([[30.0, 0, 0, 0]] * 8))
    assert abs(_run(moe, collapsed)[1].aux_loss.item() - 4.0) < 1e-4


@pytest.mark.parametrize("impl", ["fast", "ref"])
def test_padding_is_not_routed(impl):
    moe = _moe(moe_capacity_factor=1.0, moe_impl=impl)
    x = torch.randn(1, 9, D, generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[False] * 4 + [True] * 5])
    y, s = _run(moe, x, mask)
    alone, s_alone = _run(moe, x[:, 4:])
    assert s.tokens == 5 and torch.equal(s.routed, s_alone.routed) and torch.equal(s.dropped, s_alone.dropped)
    torch.testing.assert_close(y[:, 4:], alone)
    assert torch.equal(y[:, :4], torch.zeros(1, 4, D))


def test_stats_collector_sums_layers_and_summarises():
    stats = MoEStats()
    assert float(stats.aux_loss) == 0.0
    moe = _moe(moe_capacity_factor=0.5)
    x = torch.randn(2, 5, D)
    moe(x, None, stats)
    moe(x, None, stats)
    assert stats.routed.shape == (2, 4) and stats.routed.sum().item() == 2 * 10 * 2
    torch.testing.assert_close(stats.aux_loss, 2 * stats.layers[0].aux_loss)
    summary = stats.summary()
    assert summary["moe_dropped_fraction"] == pytest.approx(float(stats.dropped.sum() / stats.routed.sum()))
    assert summary["moe_dropped_fraction"] >= 1 - 4 * expert_capacity(10, 2, 4, 0.5) / 20  # 0.4
    assert 1.0 <= summary["moe_max_load"] <= 4.0
    stats.clear()
    assert stats.layers == []


@pytest.mark.parametrize("bad, match", [
    (dict(n_experts=0, layer_pattern="*E"), "n_experts > 0"),
    (dict(n_experts=4, n_experts_per_token=5), "n_experts_per_token"),
    (dict(n_experts=4, n_experts_per_token=0), "n_experts_per_token"),
    (dict(n_experts=4, moe_router="relu"), "moe_router"),
    (dict(n_experts=4, moe_capacity_factor=-1.0), "moe_capacity_factor"),
    (dict(n_experts=4, moe_aux_loss_coef=-0.1), "moe_aux_loss_coef"),
    (dict(n_experts=4, moe_shared_expert_d_ff=-1), "moe_shared_expert_d_ff"),
    (dict(n_experts=4, moe_impl="triton"), "moe_impl"),
])
def test_bad_moe_configs_say_what_is_wrong(bad, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(**bad)
