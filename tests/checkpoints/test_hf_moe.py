"""Mixtral checkpoints in and out: parity with transformers' MixtralForCausalLM."""

from __future__ import annotations

import json

import pytest
import torch

import transformers

from hybridlm.checkpoints import hf
from hybridlm.checkpoints.errors import CheckpointError
from hybridlm.models.decoder import Decoder
from hybridlm.nn.moe import MoEStats
from hybridlm.presets import get_preset

VOCAB = 160
_SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, router_aux_loss_coef=0.02,
              initializer_range=0.2)  # N(0, 0.2) weights: logits of a few units, routing far from uniform

# name -> (config kwargs, shard the HF save, shard our save, compare a greedy continuation too)
CASES = {
    "mixtral": (_SHAPE, True, False, True),
    "mixtral-window": (dict(_SHAPE, sliding_window=8, head_dim=16), False, True, False),
}


def make_hf_model(case: str, seed: int = 0) -> transformers.MixtralForCausalLM:
    torch.manual_seed(seed)
    model = transformers.MixtralForCausalLM(transformers.MixtralConfig(**CASES[case][0])).float().eval()
    with torch.no_grad():  # norms away from their ones init
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def max_shard_size(case: str) -> str:
    return "50KB" if CASES[case][1] else "2GB"


@pytest.mark.parametrize("case", list(CASES))
def test_hf_to_ours_logits_and_greedy_match(case, saved, random_ids, assert_greedy_matches_hf):
    hf_model, path = saved(case)
    assert (path / "model.safetensors.index.json").is_file() == CASES[case][1]
    ours = hf.load_hf_checkpoint(path)
    assert ours.config.pattern == "*E*E" and ours.config.n_experts == 4
    ids = random_ids()
    stats = MoEStats()
    with torch.no_grad():
        want = hf_model(ids).logits
        got = ours(ids, moe_stats=stats)
        assert want.abs().max() > 1.0  # the tolerance below is meaningful
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        assert (stats.routed > 0).sum() >= 6  # the tokens really spread over the experts
        if not CASES[case][3]:
            return
    assert_greedy_matches_hf(hf_model, ours, ids[:1, :8])


@pytest.mark.parametrize("case", list(CASES))
def test_ours_to_hf_logits_match(case, saved, tmp_path, random_ids, assert_hf_reload_matches):
    hf_model, path = saved(case)
    ours = hf.load_hf_checkpoint(path)
    assert hf.hf_arch_for(ours.config) == "mixtral"
    out = tmp_path / "out"
    hf.save_hf_checkpoint(ours, out, "mixtral", max_shard_bytes=50_000 if CASES[case][2] else 2 * 1024**3)
    assert (out / "model.safetensors.index.json").is_file() == CASES[case][2]
    reloaded = assert_hf_reload_matches(out, hf_model, random_ids(seed=2))
    assert reloaded.config.num_local_experts == 4 and reloaded.config.sliding_window == CASES[case][0].get("sliding_window")


def test_state_dict_and_config_round_trip(saved):
    _, path = saved("mixtral")
    hf_config = json.loads((path / "config.json").read_text())
    cfg, arch = hf.config_from_hf(hf_config)
    assert arch == "mixtral"
    assert (cfg.n_experts, cfg.n_experts_per_token, cfg.moe_d_ff, cfg.moe_router, cfg.moe_renormalize,
            cfg.moe_capacity_factor, cfg.moe_aux_loss_coef) == (4, 2, 96, "softmax", True, 0.0, 0.02)
    assert hf.config_from_hf(hf.config_to_hf(cfg, arch)) == (cfg, arch)

    hf_sd = hf.read_hf_state_dict(path)  # the on-disk names: block_sparse_moe.experts.{e}.w1/w2/w3
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in hf_sd
    ours = hf.state_dict_from_hf(hf_sd, cfg, arch)
    assert set(ours) == set(Decoder(cfg).state_dict())
    w1, w3 = (hf_sd[f"model.layers.0.block_sparse_moe.experts.2.{w}.weight"] for w in ("w1", "w3"))
    assert torch.equal(ours["blocks.1.mixer.experts.2.w_in.weight"], torch.cat([w1, w3]))  # [gate; up]
    back = hf.state_dict_to_hf(ours, cfg, arch)
    assert set(back) == set(hf_sd)
    for k, v in hf_sd.items():
        assert torch.equal(back[k], v), k


def test_mixtral_8x7b_preset_config_json():
    out = hf.config_to_hf(get_preset("mixtral-8x7b"), "mixtral")
    assert {k: out[k] for k in ("num_local_experts", "num_experts_per_tok", "intermediate_size", "hidden_size",
                                "num_hidden_layers", "num_key_value_heads")} == dict(
        num_local_experts=8, num_experts_per_tok=2, intermediate_size=14336, hidden_size=4096,
        num_hidden_layers=32, num_key_value_heads=8)
    assert out["rope_parameters"]["rope_theta"] == 1e6 and out["architectures"] == ["MixtralForCausalLM"]


@pytest.mark.parametrize("change, match", [
    (dict(moe_router="sigmoid"), "moe_router='sigmoid'"),
    (dict(moe_capacity_factor=1.0), "moe_capacity_factor=1.0"),
    (dict(moe_shared_expert_d_ff=32), "moe_shared_expert_d_ff=32"),
    (dict(moe_renormalize=False), "moe_renormalize=False"),
    (dict(layer_pattern="*-*E"), "not an attention\\+MoE stack"),
])
def test_moe_configs_mixtral_cannot_express(change, match):
    cfg = get_preset("mixtral-tiny", **change)
    with pytest.raises(CheckpointError, match=match):
        hf.config_to_hf(cfg, "mixtral")
    with pytest.raises(CheckpointError, match="layer pattern"):
        hf.config_to_hf(get_preset("mixtral-tiny"), "llama")  # MoE blocks are not a dense stack
    with pytest.raises(CheckpointError, match="attention\\+MoE"):
        hf.state_dict_to_hf(Decoder(get_preset("llama-tiny")).state_dict(), get_preset("llama-tiny"), "mixtral")


def test_a_checkpoint_missing_an_expert_is_reported(saved, tmp_path):
    hf_model, path = saved("mixtral-window")
    hf.save_hf_checkpoint(hf.load_hf_checkpoint(path), tmp_path / "ckpt", "mixtral")
    from safetensors.torch import load_file, save_file

    tensors = load_file(tmp_path / "ckpt" / "model.safetensors")
    del tensors["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    save_file(tensors, tmp_path / "ckpt" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lacks 1 tensors.*experts.3.w2"):
        hf.load_hf_checkpoint(tmp_path / "ckpt")
