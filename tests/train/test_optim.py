import math

import pytest

from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset
from hybridlm.train.config import TrainConfig, TrainConfigError
from hybridlm.train.optim import build_optimizer, decay_groups, lr_at


def _cfg(**kw):
    return TrainConfig(preset="gpt2-tiny", data_dir="-", out_dir="-", **kw)


def test_no_decay_on_norms_biases_and_embeddings():
    model = Decoder(get_preset("gpt2-tiny"))  # tied head, learned positions, biases, LayerNorm
    decay, no_decay = decay_groups(model)
    assert set(decay) | set(no_decay) == {n for n, _ in model.named_parameters()}
    assert "embed.weight" in no_decay and "pos_embed.weight" in no_decay
    assert all(n.endswith("weight") and ("mixer.w" in n) for n in decay), decay
    assert {"blocks.0.norm.weight", "blocks.0.norm.bias", "blocks.0.mixer.wqkv.bias", "final_norm.weight"} <= set(no_decay)
    opt = build_optimizer(model, _cfg(weight_decay=0.1))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_warmup_then_cosine_to_the_floor():
    cfg = _cfg(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(130)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # rising during warm-up
    assert all(a >= b for a, b in zip(lrs[9:110], lrs[10:111]))  # then never rising
    assert lrs[60] == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(1e-4) and lrs[129] == pytest.approx(1e-4)


def test_batch_arithmetic():
    assert _cfg(micro_batch_size=4).accumulation_steps(2) == 1
    assert _cfg(micro_batch_size=2, global_batch_size=16).accumulation_steps(2) == 4
    assert _cfg(seq_len=64, micro_batch_size=2, global_batch_tokens=512).accumulation_steps(1) == 4
    with pytest.raises(TrainConfigError, match="not a multiple"):
        _cfg(micro_batch_size=3, global_batch_size=8).accumulation_steps(1)
    with pytest.raises(TrainConfigError, match="not both"):
        _cfg(global_batch_size=8, global_batch_tokens=512)
    with pytest.raises(TrainConfigError, match="precision"):
        _cfg(precision="fp8")


def test_config_round_trips_through_json():
    import json

    cfg = _cfg(model_overrides={"d_model": 64}, max_time_s=3.5)
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(TrainConfigError, match="unknown"):
        TrainConfig.from_dict({**cfg.to_dict(), "nope": 1})


def test_training_flops_are_about_six_n_plus_attention():
    from hybridlm.analysis.memory import count_parameters
    from hybridlm.train.metrics import training_flops_per_token

    cfg = get_preset("llama-tiny")  # untied: every parameter but the embedding is a matmul weight
    n = count_parameters(cfg) - cfg.vocab_size * cfg.d_model
    norms = sum(p.numel() for name, p in Decoder(cfg).named_parameters() if "norm" in name)
    attention = 12 * cfg.n_attention_layers * cfg.n_heads * cfg.head_dim * 256  # PaLM's term, full rectangle
    assert training_flops_per_token(cfg, 256) == pytest.approx(6 * (n - norms) + attention, rel=1e-9)
