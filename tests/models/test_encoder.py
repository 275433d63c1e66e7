"""The encoder: bidirectional, padding-invariant, its fast and reference attention agree, heads."""

import pytest
import torch

from hybridlm.config import ConfigError, ModelConfig
from hybridlm.models.encoder import Encoder, pool
from hybridlm.presets import get_preset


def _model(**kw) -> Encoder:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(family="encoder", vocab_size=100, d_model=32, n_layers=2, n_heads=4, d_ff=48,
                                max_seq_len=32, position="learned", norm="layernorm", norm_position="post",
                                embed_norm=True, type_vocab_size=2, mlp="gelu", mlp_bias=True, qkv_bias=True,
                                attn_out_bias=True, mlm_head=True, tie_embeddings=True), **kw})
    return Encoder(cfg).eval()


def test_attention_is_bidirectional():
    model = _model()
    ids = torch.randint(0, 100, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 100
    a, b = model.encode(ids), model.encode(changed)
    assert not torch.allclose(a[0, 0], b[0, 0])  # the first token sees the last


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope", "relative"])
def test_right_padding_does_not_change_real_tokens(position):
    model = _model(position=position, norm="rmsnorm", norm_position="pre", embed_norm=False)
    ids = torch.randint(0, 100, (1, 6))
    padded = torch.cat((ids, torch.zeros(1, 4, dtype=torch.long)), dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    torch.testing.assert_close(model.encode(padded, mask)[:, :6], model.encode(ids), atol=1e-5, rtol=1e-5)


def test_sdpa_matches_the_reference_attention():
    fast = _model()
    ref = Encoder(fast.config.replace(attn_impl="ref")).eval()
    ref.load_state_dict(fast.state_dict())
    ids, mask = torch.randint(0, 100, (2, 9)), torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    torch.testing.assert_close(fast(ids, mask), ref(ids, mask), atol=1e-5, rtol=1e-5)


def test_mean_pool_ignores_padding_and_cls_takes_the_first():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(pool(hidden, mask)[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pool(hidden, mask)[1], hidden[1].mean(0))
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[:, 0])
    with pytest.raises(ValueError, match="pooling"):
        pool(hidden, mask, "max")


def test_mlm_head_is_tied_and_token_types_matter():
    model = _model()
    assert model.mlm.lm_head.weight is model.embed.weight
    ids = torch.randint(0, 100, (1, 5))
    assert model(ids).shape == (1, 5, 100)
    assert not torch.allclose(model.encode(ids, None, torch.ones_like(ids)), model.encode(ids))


def test_clear_errors():
    with pytest.raises(ConfigError, match="no MLM head"):
        _model(mlm_head=False)(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ConfigError, match="no pooler"):
        _model().pooled(torch.zeros(1, 3, 32))
    with pytest.raises(ConfigError, match="family"):
        Encoder(ModelConfig())
    with pytest.raises(ConfigError, match="encoder and seq2seq"):
        ModelConfig(mlm_head=True)
    with pytest.raises(ValueError, match="exceeds"):
        _model().encode(torch.zeros(1, 40, dtype=torch.long))


def test_bert_presets_build():
    for name in ("bert-tiny", "bert-base"):
        cfg = get_preset(name)
        assert cfg.family == "encoder" and cfg.norm_position == "post"
    model = Encoder(get_preset("bert-tiny"))
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape[-1] == model.config.vocab_size
