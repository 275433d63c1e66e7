import pytest
import torch

from hybridlm.nn.attention import alibi_bias, allowed_keys, attention_ref, attention_sdpa
from hybridlm.nn.positions import alibi_slopes

B, H, H_KV, T, D = 2, 4, 2, 12, 16


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g)
    k = torch.randn(B, H_KV, T, D, generator=g)
    v = torch.randn(B, H_KV, T, D, generator=g)
    return q, k, v


def _positions(pad: list[int]) -> torch.Tensor:
    pos = torch.arange(T).repeat(B, 1) - torch.tensor(pad)[:, None]
    return pos.masked_fill(pos < 0, -1)


MASKS = {
    "causal": lambda pos: (allowed_keys(pos, pos, None), None),
    "window": lambda pos: (allowed_keys(pos, pos, 4), None),
    "padding": lambda pos: (allowed_keys(pos, pos, None), None),
    "alibi": lambda pos: (None, alibi_bias(allowed_keys(pos, pos, None), pos, pos, alibi_slopes(H))),
}


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_sdpa_matches_reference_for_every_mask_kind(kind):
    q, k, v = _qkv()
    pos = _positions([3, 0] if kind == "padding" else [0, 0])
    allowed, bias = MASKS[kind](pos)
    mask = allowed if bias is None else bias
    out_ref = attention_ref(q, k, v, mask, False)
    out_fast = attention_sdpa(q, k, v, mask, False)
    torch.testing.assert_close(out_fast, out_ref, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out_fast).all()


def test_is_causal_flag_equals_explicit_causal_mask():
    q, k, v = _qkv(1)
    pos = _positions([0, 0])
    explicit = attention_ref(q, k, v, allowed_keys(pos, pos, None), False)
    torch.testing.assert_close(attention_ref(q, k, v, None, True), explicit)
    torch.testing.assert_close(attention_sdpa(q, k, v, None, True), explicit, atol=1e-5, rtol=1e-5)


def test_reference_is_the_textbook_formula():
    # one head, no mask: softmax(q k^T / sqrt(d)) v by hand
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    by_hand = torch.softmax(q[0, 0] @ k[0, 0].T / 2.0, dim=-1) @ v[0, 0]
    torch.testing.assert_close(attention_ref(q, k, v, None, False)[0, 0], by_hand)


def test_window_and_causal_rules():
    pos = torch.tensor([[0, 1, 2, 3, 4]])
    ok = allowed_keys(pos, pos, 2)[0, 0]
    # query 4 sees keys 3 and 4 only; query 0 sees only itself
    assert ok[4].tolist() == [False, False, False, True, True]
    assert ok[0].tolist() == [True, False, False, False, False]


def test_padding_keys_are_never_visible_to_real_queries():
    pos = torch.tensor([[-1, -1, 0, 1]])
    ok = allowed_keys(pos, pos, None)[0, 0]
    assert not ok[2:, :2].any()
    assert ok[3, 2:].all()
