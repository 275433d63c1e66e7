"""HF checkpoints in and out: parity with `transformers` for every architecture, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

import transformers

from hybridlm.checkpoints import hf  # noqa: E402
from hybridlm.checkpoints.errors import CheckpointError  # noqa: E402
from hybridlm.config import ModelConfig  # noqa: E402
from hybridlm.models.decoder import Decoder  # noqa: E402

VOCAB = 160
_LLAMA_SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                    rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)

# name -> (HF config class, model class, config kwargs, shard the HF save, shard our save)
CASES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
              dict(_LLAMA_SHAPE, attention_bias=True, mlp_bias=True), True, False),
    "llama-rope-llama3": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                          dict(_LLAMA_SHAPE, rope_parameters=dict(
                              rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                              high_freq_factor=4.0, original_max_position_embeddings=16)), False, False),
    "llama-rope-linear": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                          dict(_LLAMA_SHAPE, tie_word_embeddings=True,
                               rope_parameters=dict(rope_type="linear", rope_theta=500.0, factor=4.0)), False, True),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                dict(_LLAMA_SHAPE, sliding_window=8, head_dim=16), False, False),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              dict(_LLAMA_SHAPE, hidden_act="gelu_pytorch_tanh"), False, False),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
              dict(_LLAMA_SHAPE, head_dim=24, tie_word_embeddings=True), True, True),
    "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel,
             dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=0,
                  eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), False, True),
}


def make_hf_model(case: str, seed: int = 0):
    """A tiny random HF model whose norms and biases are not at their (ones, zeros) init."""
    config_cls, model_cls, kwargs, _, _ = CASES[case]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def max_shard_size(case: str) -> str:
    return "20KB" if CASES[case][3] else "2GB"


@pytest.mark.parametrize("case", list(CASES))
def test_hf_to_ours_logits_and_greedy_match(case, saved, random_ids, assert_greedy_matches_hf):
    hf_model, path = saved(case)
    if CASES[case][3]:
        assert (path / "model.safetensors.index.json").is_file()
    ours = hf.load_hf_checkpoint(path)
    ids = random_ids()
    with torch.no_grad():
        want = hf_model(ids).logits
        got = ours(ids)
        assert want.abs().max() > 1.0  # the tolerance below is meaningful
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)

    assert_greedy_matches_hf(hf_model, ours, ids[:1, :8])


@pytest.mark.parametrize("case", list(CASES))
def test_ours_to_hf_logits_match(case, saved, tmp_path, random_ids, assert_hf_reload_matches):
    hf_model, path = saved(case)
    ours = hf.load_hf_checkpoint(path)
    arch = hf.detect_arch(json.loads((path / "config.json").read_text()))
    out = tmp_path / "out"
    hf.save_hf_checkpoint(ours, out, arch, max_shard_bytes=20_000 if CASES[case][4] else 2 * 1024**3)
    assert (out / "model.safetensors.index.json").is_file() == CASES[case][4]
    if ours.config.tie_embeddings:
        assert "lm_head.weight" not in hf.read_hf_state_dict(out)
    assert_hf_reload_matches(out, hf_model, random_ids(seed=2))


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_and_config_round_trip(case, saved):
    hf_model, path = saved(case)
    hf_config = json.loads((path / "config.json").read_text())
    cfg, arch = hf.config_from_hf(hf_config)
    assert arch == hf_config["model_type"]
    assert hf.config_from_hf(hf.config_to_hf(cfg, arch)) == (cfg, arch)
    assert hf.hf_arch_for(cfg) == ("llama" if arch == "llama" else arch)

    hf_sd = hf_model.state_dict()
    ours = hf.state_dict_from_hf(hf_sd, cfg, arch)
    assert set(ours) == set(Decoder(cfg).state_dict()) - ({"lm_head.weight"} if cfg.tie_embeddings else set())
    back = hf.state_dict_to_hf(ours, cfg, arch)
    if cfg.tie_embeddings:
        hf_sd = {k: v for k, v in hf_sd.items() if k != "lm_head.weight"}
    assert set(back) == set(hf_sd)
    for k, v in hf_sd.items():
        assert torch.equal(back[k], v), k
    if arch == "gpt2":  # GPT2Model checkpoints have no "transformer." prefix
        bare = {k.removeprefix("transformer."): v for k, v in hf_sd.items()}
        assert hf.state_dict_from_hf(bare, cfg, arch).keys() == ours.keys()


def test_config_fields_per_arch(saved):
    expectations = {
        "llama": dict(qkv_bias=True, attn_out_bias=True, mlp_bias=True, n_kv_heads=2, head_dim=16,
                      mlp="swiglu", bos_token_id=1, eos_token_id=2, tie_embeddings=False),
        "llama-rope-llama3": dict(rope_scaling="llama3", rope_factor=8.0, rope_original_max_seq_len=16),
        "llama-rope-linear": dict(rope_scaling="linear", rope_factor=4.0, rope_theta=500.0, tie_embeddings=True),
        "mistral": dict(sliding_window=8, qkv_bias=False),
        "qwen2": dict(qkv_bias=True, attn_out_bias=False, mlp="geglu", sliding_window=None),
        "qwen3": dict(qk_norm=True, head_dim=24, tie_embeddings=True),
        "gpt2": dict(position="learned", norm="layernorm", mlp="gelu_tanh", d_ff=256, max_seq_len=128,
                     tie_embeddings=True, qkv_bias=True, mlp_bias=True),
    }
    for case, fields in expectations.items():
        cfg, _ = hf.config_from_hf(json.loads((saved(case)[1] / "config.json").read_text()))
        assert {k: getattr(cfg, k) for k in fields} == fields, case


def test_old_style_rope_config_and_unsupported_scaling():
    old = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
               num_attention_heads=4, rope_theta=500000.0, rope_scaling={"type": "linear", "factor": 2.0},
               eos_token_id=[5, 6])
    cfg, arch = hf.config_from_hf(old)
    assert (arch, cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor, cfg.eos_token_id) == (
        "llama", 500000.0, "linear", 2.0, 5)
    with pytest.raises(CheckpointError, match="yarn"):
        hf.config_from_hf(dict(old, rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(CheckpointError, match="yarn"):
        hf.config_from_hf(dict(old, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}))


def test_arch_detection_falls_back_to_architectures_and_rejects_unknown():
    base = dict(vocab_size=64, n_embd=32, n_layer=1, n_head=4)
    assert hf.config_from_hf(dict(base, architectures=["GPT2LMHeadModel"]))[1] == "gpt2"
    with pytest.raises(CheckpointError, match="unsupported.*falcon.*supported: llama, mistral, qwen2, qwen3, gpt2"):
        hf.config_from_hf(dict(base, model_type="falcon", architectures=["FalconForCausalLM"]))


def test_qwen2_sliding_window_rules():
    base = dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, sliding_window=16)
    assert hf.config_from_hf(base)[0].sliding_window is None  # use_sliding_window defaults to off
    on = dict(base, use_sliding_window=True, max_window_layers=0)
    assert hf.config_from_hf(on)[0].sliding_window == 16
    with pytest.raises(CheckpointError, match="some layers"):
        hf.config_from_hf(dict(on, max_window_layers=1))


def test_hf_arch_for():
    tiny = dict(vocab_size=64, d_model=32, n_layers=1, n_heads=4, d_ff=64)
    assert hf.hf_arch_for(ModelConfig(**tiny)) == "llama"
    assert hf.hf_arch_for(ModelConfig(**tiny, sliding_window=8)) == "mistral"
    assert hf.hf_arch_for(ModelConfig(**tiny, qk_norm=True)) == "qwen3"
    assert hf.hf_arch_for(ModelConfig(**tiny, qkv_bias=True)) == "qwen2"
    gpt2 = dict(tiny, position="learned", norm="layernorm", mlp="gelu_tanh", qkv_bias=True, attn_out_bias=True,
                mlp_bias=True)
    assert hf.hf_arch_for(ModelConfig(**gpt2)) == "gpt2"
    with pytest.raises(CheckpointError, match="position='alibi'"):
        hf.hf_arch_for(ModelConfig(**tiny, position="alibi"))
    with pytest.raises(CheckpointError, match="post-norm"):
        hf.hf_arch_for(ModelConfig(**tiny, norm_position="post"))
    with pytest.raises(CheckpointError, match="layer pattern"):
        hf.hf_arch_for(ModelConfig(**tiny, layer_pattern="**-"))
    with pytest.raises(CheckpointError, match="qkv_bias"):
        hf.config_to_hf(ModelConfig(**tiny, qkv_bias=True, attn_out_bias=True), "mistral")


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "qwen3"])
def test_our_sliding_window_model_to_hf(arch, tmp_path, random_ids):
    """A model born in hybridlm, with a window shorter than the sequence, means the same in HF."""
    cfg = ModelConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96,
                      max_seq_len=64, sliding_window=8, qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3")
    assert hf.hf_arch_for(cfg) == arch
    torch.manual_seed(0)
    ours = Decoder(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_hf_checkpoint(ours, tmp_path / "out", arch)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert reloaded.config.sliding_window == 8
    ids = random_ids(seed=4)
    with torch.no_grad():
        want = ours(ids)
        torch.testing.assert_close(reloaded(ids).logits, want, atol=1e-4, rtol=0)
        # the window matters: without it the logits after position 8 differ
        unwindowed = Decoder(cfg.replace(sliding_window=None)).eval()
        unwindowed.load_state_dict(ours.state_dict())
        assert (unwindowed(ids) - want)[:, 8:].abs().max() > 1e-2


def test_non_contiguous_weights_save_and_bin_load(saved, tmp_path, random_ids):
    hf_model, path = saved("llama")
    ours = hf.load_hf_checkpoint(path)
    with torch.no_grad():  # as inference code may leave them: transposed storage
        for block in ours.blocks[1::2]:
            w = block.mixer.w_out.weight
            w.data = w.data.t().contiguous().t()
            assert not w.is_contiguous()
    hf.save_hf_checkpoint(ours, tmp_path / "a", "llama")
    # pytorch_model.bin, read through the restricted unpickler
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    torch.save(hf_model.state_dict(), tmp_path / "b" / "pytorch_model.bin")
    ids = random_ids(seed=3)
    with torch.no_grad():
        want = hf_model(ids).logits
        for d in ("a", "b"):
            torch.testing.assert_close(hf.load_hf_checkpoint(tmp_path / d)(ids), want, atol=1e-4, rtol=0)


def test_dtype_argument(saved):
    ours = hf.load_hf_checkpoint(saved("qwen3")[1], dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in ours.parameters())
    assert ours.rope_inv_freq.dtype == torch.float32


# ---------------------------------------------------------------- errors


@pytest.fixture
def llama_dir(saved, tmp_path):
    """A writable copy of the saved llama checkpoint, unsharded."""
    hf.save_hf_checkpoint(hf.load_hf_checkpoint(saved("llama")[1]), tmp_path / "ckpt", "llama")
    return tmp_path / "ckpt"


def _one_line_error(path, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        hf.load_hf_checkpoint(path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_directory(tmp_path):
    assert str(tmp_path / "nope") in _one_line_error(tmp_path / "nope", "not found")


def test_missing_and_invalid_config(llama_dir):
    (llama_dir / "config.json").write_text("{not json")
    assert "config.json" in _one_line_error(llama_dir, "invalid JSON")
    (llama_dir / "config.json").unlink()
    assert "config.json" in _one_line_error(llama_dir, "not found")


def test_truncated_safetensors(llama_dir):
    file = llama_dir / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    assert "model.safetensors" in _one_line_error(llama_dir, "corrupt or truncated")


def test_missing_weight_file(llama_dir):
    (llama_dir / "model.safetensors").unlink()
    _one_line_error(llama_dir, "no weight file")


def test_unknown_model_type(llama_dir):
    config = json.loads((llama_dir / "config.json").read_text())
    config.update(model_type="mamba", architectures=["MambaForCausalLM"])
    (llama_dir / "config.json").write_text(json.dumps(config))
    _one_line_error(llama_dir, "unsupported HF model_type 'mamba'.*supported: llama")


def _rewrite_tensors(path, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_shape_and_extra_tensors(llama_dir):
    _rewrite_tensors(llama_dir, lambda t: t.pop("lm_head.weight"))  # tie_word_embeddings is false
    assert "lm_head.weight" in _one_line_error(llama_dir, "lacks 1 tensors")

    def wrong_shape(t):
        t["lm_head.weight"] = torch.zeros(VOCAB, 32)
    _rewrite_tensors(llama_dir, wrong_shape)
    _one_line_error(llama_dir, r"shape mismatch: lm_head.weight is \(160, 32\), config needs \(160, 64\)")

    def extra(t):
        t["lm_head.weight"] = torch.zeros(VOCAB, 64)
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(8)  # ignored buffer
    _rewrite_tensors(llama_dir, extra)
    hf.load_hf_checkpoint(llama_dir)
    _rewrite_tensors(llama_dir, lambda t: t.update({"model.layers.0.mystery.weight": torch.zeros(3)}))
    _one_line_error(llama_dir, "unexpected tensors.*mystery")


def test_failed_save_leaves_nothing(saved, tmp_path, monkeypatch):
    ours = hf.load_hf_checkpoint(saved("qwen3")[1])

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        hf.save_hf_checkpoint(ours, tmp_path / "out", "qwen3", max_shard_bytes=20_000)
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_to_overwrite(saved, tmp_path):
    ours = hf.load_hf_checkpoint(saved("gpt2")[1])
    hf.save_hf_checkpoint(ours, tmp_path / "out", "gpt2")
    with pytest.raises(CheckpointError, match="overwrite=True"):
        hf.save_hf_checkpoint(ours, tmp_path / "out", "gpt2")
    hf.save_hf_checkpoint(ours, tmp_path / "out", "gpt2", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
