"""HF Mamba2ForCausalLM and NemotronHForCausalLM in and out: parity with `transformers`, the accepted
spellings of keys and layer types, and clear errors for what the converter cannot express."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from hybridlm.checkpoints import hf, hf_hybrid
from hybridlm.checkpoints.errors import CheckpointError
from hybridlm.models.decoder import Decoder

VOCAB = 160
_MAMBA = dict(vocab_size=VOCAB, hidden_size=64, n_groups=2, conv_kernel=4, chunk_size=8, bos_token_id=1,
              eos_token_id=2, layer_norm_epsilon=1e-5)
_NEMOTRON = dict(_MAMBA, layers_block_type=["mamba", "mlp", "attention", "mlp", "mamba", "mlp"],
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96,
                 mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16, max_position_embeddings=128,
                 initializer_range=0.1)

# name -> (HF config class, model class, config kwargs)
CASES = {
    "mamba2": (transformers.Mamba2Config, transformers.Mamba2ForCausalLM,
               dict(_MAMBA, num_hidden_layers=2, num_heads=8, head_dim=16, state_size=16, initializer_range=0.1)),
    "mamba2-tied-biased": (transformers.Mamba2Config, transformers.Mamba2ForCausalLM,
                           dict(_MAMBA, num_hidden_layers=2, num_heads=16, head_dim=8, state_size=8, n_groups=4,
                                use_bias=True, use_conv_bias=False, tie_word_embeddings=True,
                                initializer_range=0.1)),
    "nemotron_h": (transformers.NemotronHConfig, transformers.NemotronHForCausalLM, _NEMOTRON),
    "nemotron_h-biased-relu": (transformers.NemotronHConfig, transformers.NemotronHForCausalLM,
                               dict(_NEMOTRON, layers_block_type=["attention", "mlp", "mamba", "mamba", "mlp"],
                                    mlp_hidden_act="relu", mlp_bias=True, use_bias=True, n_groups=4,
                                    tie_word_embeddings=True)),
}


def make_hf_model(case: str, seed: int = 0):
    """A tiny random HF model with no parameter at its init value: weights N(0, 0.1)-perturbed, and
    dt_bias in (-1, 1) so dt stays well above time_step_min (transformers clamps it there in prefill
    but not in its decode step; we clamp in both)."""
    config_cls, model_cls, kwargs = CASES[case]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("dt_bias"):
                p.uniform_(-1.0, 1.0)
            else:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_hf_to_ours_logits_match(case, saved, random_ids):
    hf_model, path = saved(case)
    ours = hf.load_hf_checkpoint(path)
    ids = random_ids()
    with torch.no_grad():
        want = hf_model(ids).logits
        got = ours(ids)
    assert want.abs().max() > 1.0  # the tolerance below is meaningful
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", ["mamba2", "nemotron_h"])
def test_hf_to_ours_greedy_continuation_matches(case, saved, random_ids, assert_greedy_matches_hf):
    hf_model, path = saved(case)
    assert_greedy_matches_hf(hf_model, hf.load_hf_checkpoint(path), random_ids()[:1, :8])


@pytest.mark.parametrize("case", list(CASES))
def test_ours_to_hf_logits_match(case, saved, tmp_path, random_ids, assert_hf_reload_matches):
    hf_model, path = saved(case)
    ours = hf.load_hf_checkpoint(path)
    arch = hf.hf_arch_for(ours.config)
    assert arch == case.split("-")[0]
    hf.save_hf_checkpoint(ours, tmp_path / "out", arch)
    if ours.config.tie_embeddings:
        assert "lm_head.weight" not in hf.read_hf_state_dict(tmp_path / "out")
    assert_hf_reload_matches(tmp_path / "out", hf_model, random_ids(seed=2))


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_and_config_round_trip(case, saved):
    hf_model, path = saved(case)
    hf_config = json.loads((path / "config.json").read_text())
    cfg, arch = hf.config_from_hf(hf_config)
    assert arch == hf_config["model_type"] == case.split("-")[0]
    assert hf.config_from_hf(json.loads(json.dumps(hf.config_to_hf(cfg, arch)))) == (cfg, arch)
    disk = load_file(path / "model.safetensors")
    ours = hf.state_dict_from_hf(disk, cfg, arch)
    expected = set(Decoder(cfg).state_dict()) - ({"lm_head.weight"} if cfg.tie_embeddings else set())
    assert set(ours) == expected
    back = hf.state_dict_to_hf(ours, cfg, arch)
    assert set(back) == set(disk)
    for k, v in disk.items():
        assert torch.equal(back[k], v), k


def test_config_fields(saved):
    cfg, _ = hf.config_from_hf(json.loads((saved("nemotron_h")[1] / "config.json").read_text()))
    assert cfg.pattern == "M-*-M-" and cfg.position == "none" and cfg.mlp == "relu2"
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff) == (4, 2, 16, 96)
    assert (cfg.mamba_n_heads, cfg.mamba_head_dim, cfg.d_state, cfg.mamba_n_groups, cfg.d_conv) == (8, 16, 16, 2, 4)
    assert cfg.mamba_dt_limit == (cfg.mamba_dt_min, None) and not cfg.tie_embeddings
    cfg, _ = hf.config_from_hf(json.loads((saved("mamba2-tied-biased")[1] / "config.json").read_text()))
    assert cfg.pattern == "MM" and cfg.tie_embeddings and cfg.mamba_proj_bias and not cfg.mamba_conv_bias
    assert (cfg.mamba_n_heads, cfg.mamba_head_dim, cfg.mamba_n_groups, cfg.mamba_dt_limit) == (16, 8, 4, (0.0, None))


def test_key_prefixes_and_layer_type_spellings(saved):
    """`model.`, `backbone.` and bare keys; mamba/attention names and the old pattern string."""
    hf_model, path = saved("nemotron_h")
    disk = load_file(path / "model.safetensors")
    hf_config = json.loads((path / "config.json").read_text())
    cfg, arch = hf.config_from_hf(hf_config)
    want = hf.state_dict_from_hf(disk, cfg, arch)
    for rename in (lambda k: k.replace("backbone.", "model."), lambda k: k.replace("backbone.", "")):
        got = hf.state_dict_from_hf({rename(k): v for k, v in disk.items()}, cfg, arch)
        assert got.keys() == want.keys()
    old_names = {k: v for k, v in hf_config.items() if k != "layers_block_type"}
    old_names["layer_types"] = ["mamba", "mlp", "attention", "mlp", "mamba", "mlp"]
    assert hf.config_from_hf(old_names)[0] == cfg
    legacy = {k: v for k, v in old_names.items() if k not in ("layer_types", "n_groups", "conv_kernel")}
    legacy.update(hybrid_override_pattern="M-*-M-", mamba_n_groups=2, mamba_d_conv=4)
    assert hf.config_from_hf(legacy)[0] == cfg
    # the in-memory (transformers 5) names are what from_pretrained also accepts
    assert set(hf_model.state_dict()) == {k.replace("backbone.", "model.") for k in disk}


def test_loading_model_prefixed_checkpoint(saved, tmp_path, random_ids):
    hf_model, path = saved("nemotron_h")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    save_file({k.replace("backbone.", "model."): v for k, v in load_file(path / "model.safetensors").items()},
              tmp_path / "model.safetensors")
    ids = random_ids(seed=5)
    with torch.no_grad():
        torch.testing.assert_close(hf.load_hf_checkpoint(tmp_path)(ids), hf_model(ids).logits, atol=1e-4, rtol=0)


def test_errors():
    base = dict(model_type="nemotron_h", vocab_size=VOCAB, hidden_size=64, num_attention_heads=4,
                intermediate_size=96, mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16)
    with pytest.raises(CheckpointError, match="MoE"):
        hf.config_from_hf(dict(base, layers_block_type=["mamba", "moe"]))
    with pytest.raises(CheckpointError, match="unknown Nemotron-H layer types.*conv"):
        hf.config_from_hf(dict(base, layers_block_type=["mamba", "conv"]))
    with pytest.raises(CheckpointError, match="mlp_hidden_act 'silu'"):
        hf.config_from_hf(dict(base, layers_block_type=["mlp"], mlp_hidden_act="silu"))
    cfg, _ = hf.config_from_hf(dict(base, layers_block_type=["mamba", "attention", "mlp"]))
    with pytest.raises(CheckpointError, match="not all Mamba-2 blocks"):
        hf.config_to_hf(cfg, "mamba2")
    with pytest.raises(CheckpointError, match="position='rope'"):
        hf.config_to_hf(cfg.replace(position="rope"), "nemotron_h")
    with pytest.raises(CheckpointError, match="mamba_dt_limit"):
        hf.hf_arch_for(cfg.replace(mamba_dt_limit=(0.0, 1.0)))
    assert hf_hybrid.arch_for(cfg) == "nemotron_h" and hf_hybrid.arch_for(cfg.replace(layer_pattern="MM")) == "mamba2"
