"""Shared models for the generation tests: random Decoders with peaked logits, and a tiny random
transformers Llama copied into our Decoder (the reference for beam search)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hybridlm.config import ModelConfig
from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset


def random_decoder(cfg: ModelConfig | str, std: float = 0.5, seed: int = 0, **overrides) -> Decoder:
    """A Decoder in eval mode whose Linear/Embedding weights are N(0, std) (biases too, so the
    GPT-2 layout is exercised). The default N(0, 0.02) gives near-uniform logits, where greedy paths
    are decided by noise; std 0.5 makes them peaked."""
    if isinstance(cfg, str):
        cfg = get_preset(cfg, **overrides)
    elif overrides:
        cfg = cfg.replace(**overrides)
    model = Decoder(cfg).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std, generator=generator)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.normal_(0.0, std, generator=generator)
    return model


def tiny_hf_llama(seed: int = 0):
    """A 2-layer, width-64 random transformers Llama with logits far from flat."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)  # transformers initialises from the global RNG
    hf_cfg = LlamaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                         initializer_range=0.2, tie_word_embeddings=False,
                         eos_token_id=None)  # no EOS unless a test passes one (else generate() adds 2)
    return LlamaForCausalLM(hf_cfg).eval()


def decoder_from_hf_llama(hf) -> Decoder:
    """Our Decoder holding the same weights as a transformers LlamaForCausalLM."""
    c = hf.config
    cfg = ModelConfig(vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers,
                      n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads, d_ff=c.intermediate_size,
                      max_seq_len=c.max_position_embeddings, rope_theta=c.rope_parameters["rope_theta"],
                      norm_eps=c.rms_norm_eps, tie_embeddings=False, eos_token_id=None)
    src = hf.state_dict()
    ours = {"embed.weight": src["model.embed_tokens.weight"], "final_norm.weight": src["model.norm.weight"],
            "lm_head.weight": src["lm_head.weight"]}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        attn, mlp = f"blocks.{2 * i}.", f"blocks.{2 * i + 1}."
        ours[attn + "norm.weight"] = src[p + "input_layernorm.weight"]
        ours[attn + "mixer.wqkv.weight"] = torch.cat([src[p + f"self_attn.{n}_proj.weight"] for n in "qkv"], dim=0)
        ours[attn + "mixer.wo.weight"] = src[p + "self_attn.o_proj.weight"]
        ours[mlp + "norm.weight"] = src[p + "post_attention_layernorm.weight"]
        ours[mlp + "mixer.w_in.weight"] = torch.cat([src[p + "mlp.gate_proj.weight"], src[p + "mlp.up_proj.weight"]], dim=0)
        ours[mlp + "mixer.w_out.weight"] = src[p + "mlp.down_proj.weight"]
    model = Decoder(cfg).eval()
    model.load_state_dict(ours, strict=True)
    return model


@pytest.fixture
def make_decoder():
    """Factory: make_decoder(preset name or ModelConfig, std=0.5, seed=0, **config overrides)."""
    return random_decoder


@pytest.fixture(scope="session")
def hf_llama_pair():
    """(transformers LlamaForCausalLM, our Decoder) with identical weights."""
    hf = tiny_hf_llama()
    return hf, decoder_from_hf_llama(hf)
