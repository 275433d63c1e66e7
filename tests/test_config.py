import pytest

from hybridlm.config import ConfigError, ModelConfig
from hybridlm.presets import PRESETS, UnknownPresetError, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_round_trips_through_json(name):
    cfg = get_preset(name)
    again = ModelConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.blocks == cfg.blocks


def test_empty_pattern_is_attention_then_mlp_per_layer():
    cfg = ModelConfig(n_layers=3)
    assert cfg.pattern == "*-*-*-"
    assert cfg.n_attention_layers == 3


def test_explicit_pattern_drives_the_blocks():
    cfg = ModelConfig(layer_pattern="**-")
    assert cfg.blocks == ("attention", "attention", "mlp")


def test_derived_head_dims_and_kv_heads():
    cfg = ModelConfig(d_model=256, n_heads=8)
    assert cfg.head_dim == 32 and cfg.n_kv_heads == 8


@pytest.mark.parametrize("bad, match", [
    (dict(d_model=96, n_heads=6, n_kv_heads=4), "multiple of n_kv_heads"),
    (dict(layer_pattern="*X"), "unknown symbols"),
    (dict(position="nope"), "position"),
    (dict(mlp="tanhglu"), "mlp"),
    (dict(d_model=100, n_heads=3), "divisible"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(layer_pattern="M-", mamba_n_heads=6, mamba_n_groups=4), "multiple of mamba_n_groups"),
    (dict(mamba_dt_limit=(0.1, 0.01)), "mamba_dt_limit"),
    (dict(mamba_dt_limit=(0.1,)), "mamba_dt_limit"),
    (dict(d_state=0), "Mamba sizes"),
    (dict(ssd_impl="fast"), "ssd_impl"),
])
def test_bad_configs_say_what_is_wrong(bad, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**bad)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(UnknownPresetError) as err:
        get_preset("llama-huge")
    assert "llama-tiny" in str(err.value) and "smollm2-135m" in str(err.value)


def test_unknown_field_in_json_is_rejected():
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_dict({"d_model": 64, "n_heads": 4, "colour": "blue"})


def test_kv_bytes_per_token_smollm2():
    # 30 layers x 2 (K, V) x 3 KV heads x 64 dims x 4 bytes
    assert get_preset("smollm2-135m").kv_cache_bytes_per_token(4) == 30 * 2 * 3 * 64 * 4


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "mistral-tiny", "qwen3-tiny"])
def test_tiny_presets_are_a_few_million_parameters_at_most(name):
    from hybridlm.models.decoder import Decoder

    n = sum(p.numel() for p in Decoder(get_preset(name)).parameters())
    assert n < 5_000_000
