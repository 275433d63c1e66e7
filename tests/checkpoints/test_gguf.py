"""GGUF in: dequantizers against gguf's reference, tiny written files against the weights that went
in, the real SmolLM2 file against transformers, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGUFWriter, quants
from gguf import GGMLQuantizationType as Q

from hybridlm.checkpoints.errors import CheckpointError
from hybridlm.checkpoints.gguf import dequantize, load_gguf, read_gguf_config
from hybridlm.config import ModelConfig
from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset
from hybridlm.tokenizer import byte_alphabet


# -- dequantizers ----------------------------------------------------------------------------------
def random_blocks(qtype: Q, n_rows: int, blocks_per_row: int, seed: int = 0) -> np.ndarray:
    """Random bytes for every field of every block, with the f16 scales drawn finite (+-0.05)."""
    rng = np.random.default_rng(seed)
    _, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (n_rows, blocks_per_row, size), dtype=np.uint8)
    f16_fields = {Q.Q8_0: [0], Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q4_K: [0, 2], Q.Q6_K: [208]}[qtype]
    for offset in f16_fields:
        scales = (rng.standard_normal((n_rows, blocks_per_row)) * 0.05).astype(np.float16)
        raw[..., offset:offset + 2] = scales.view(np.uint8).reshape(n_rows, blocks_per_row, 2)
    return raw.reshape(n_rows, -1)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K])
def test_dequantize_random_blocks_bit_exact(qtype):
    raw = random_blocks(qtype, n_rows=5, blocks_per_row=3)
    ours, ref = dequantize(raw, qtype), quants.dequantize(raw, qtype)
    assert ours.shape == ref.shape == (5, 3 * GGML_QUANT_SIZES[qtype][0])
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.BF16])
def test_dequantize_quantized_data_bit_exact(qtype):
    """Blocks made by gguf's own quantizer from Gaussian weights (the realistic case)."""
    x = np.random.default_rng(1).standard_normal((7, 96)).astype(np.float32)
    raw = quants.quantize(x, qtype)
    ours, ref = dequantize(raw, qtype), quants.dequantize(raw, qtype)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))
    assert np.abs(ours - x).max() < 0.25 * np.abs(x).max()  # and it is an approximation of x


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_dequantize_plain_floats(dtype):
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(dtype)
    np.testing.assert_array_equal(dequantize(x.view(np.uint8), Q.F32 if dtype == np.float32 else Q.F16),
                                  x.astype(np.float32))


def test_dequantize_unsupported_type_names_it():
    with pytest.raises(CheckpointError, match="Q5_1"):
        dequantize(np.zeros((1, 24), np.uint8), Q.Q5_1)


# -- tiny files written with GGUFWriter --------------------------------------------------------------
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "he ll", "Ġ w"]
TOKENS = SPECIALS + list(byte_alphabet().values()) + ["he", "ll", "hell", "Ġw"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(vocab_size=len(TOKENS), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96,
                  max_seq_len=128, rope_theta=500.0, norm_eps=1e-6)
    return get_preset("llama-tiny", **(fields | overrides))


def random_model(cfg: ModelConfig, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    model = Decoder(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.2) + (1.0 if p.dim() == 1 else 0.0))
    return model


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q and k rows (its `permute`)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: Decoder) -> dict[str, np.ndarray]:
    """Our weights under llama.cpp's names and layout (q/k permuted, fused matrices split)."""
    cfg, sd = model.config, {k: v.detach().numpy() for k, v in model.state_dict().items()}
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    out = {"token_embd.weight": sd["embed.weight"], "output_norm.weight": sd["final_norm.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(cfg.n_layers):
        a, m = f"blocks.{2 * i}", f"blocks.{2 * i + 1}"
        wqkv, w_in = sd[f"{a}.mixer.wqkv.weight"], sd[f"{m}.mixer.w_in.weight"]
        out |= {f"blk.{i}.attn_norm.weight": sd[f"{a}.norm.weight"],
                f"blk.{i}.attn_q.weight": llama_cpp_permute(wqkv[:q], cfg.n_heads),
                f"blk.{i}.attn_k.weight": llama_cpp_permute(wqkv[q:q + kv], cfg.n_kv_heads),
                f"blk.{i}.attn_v.weight": wqkv[q + kv:],
                f"blk.{i}.attn_output.weight": sd[f"{a}.mixer.wo.weight"],
                f"blk.{i}.ffn_norm.weight": sd[f"{m}.norm.weight"],
                f"blk.{i}.ffn_gate.weight": w_in[:cfg.d_ff], f"blk.{i}.ffn_up.weight": w_in[cfg.d_ff:],
                f"blk.{i}.ffn_down.weight": sd[f"{m}.mixer.w_out.weight"]}
    return out


def tensor_type(name: str, array: np.ndarray) -> Q:
    """A mix of storage types: norms F32, attention F16, the rest Q8_0."""
    if array.ndim == 1:
        return Q.F32
    return Q.F16 if ".attn_" in name else Q.Q8_0


def write_gguf(path: Path, cfg: ModelConfig, tensors: dict[str, np.ndarray], arch: str = "llama",
               types=tensor_type, extra=None) -> None:
    w = GGUFWriter(str(path), arch)
    if extra is not None:
        extra(w)
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(TOKENS)
    w.add_token_types([3 if t in SPECIALS else 1 for t in TOKENS])
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    for name, array in tensors.items():
        qtype = types(name, array)
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, array.astype(np.float32 if qtype == Q.F32 else np.float16))
        else:
            w.add_tensor(name, quants.quantize(array, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def stored_weights(model: Decoder, types=tensor_type) -> dict[str, torch.Tensor]:
    """Our state dict after the round trip through each tensor's storage type (gguf's own codec)."""
    sd = model.state_dict()
    cfg = model.config
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    for i in range(cfg.n_layers):  # which rows of our fused weights each GGUF tensor became
        parts = {f"blocks.{2 * i}.mixer.wqkv.weight": [("attn_q", 0, q), ("attn_k", q, q + kv),
                                                        ("attn_v", q + kv, None)],
                 f"blocks.{2 * i}.mixer.wo.weight": [("attn_output", 0, None)],
                 f"blocks.{2 * i + 1}.mixer.w_in.weight": [("ffn_gate", 0, cfg.d_ff), ("ffn_up", cfg.d_ff, None)],
                 f"blocks.{2 * i + 1}.mixer.w_out.weight": [("ffn_down", 0, None)]}
        for key, bands in parts.items():
            for gguf_name, start, stop in bands:
                rows = sd[key][start:stop].numpy()
                qtype = types(f"blk.{i}.{gguf_name}.weight", rows)
                sd[key][start:stop] = torch.from_numpy(quants.dequantize(quants.quantize(rows, qtype), qtype))
    for key, gguf_name in (("embed.weight", "token_embd.weight"), ("lm_head.weight", "output.weight")):
        w = sd[key].numpy()
        qtype = types(gguf_name, w)
        sd[key] = torch.from_numpy(quants.dequantize(quants.quantize(w, qtype), qtype))
    if cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["embed.weight"]
    return sd


@pytest.mark.parametrize("tie", [True, False])
def test_tiny_gguf_logits_match_the_weights_written(tmp_path, tie):
    """F32 norms, F16 attention, Q8_0 MLP and embeddings; q/k rows permuted the llama.cpp way.
    Loading must give the model those stored weights describe, so the un-permutation is pinned."""
    ref = random_model(tiny_config(tie_embeddings=tie))
    write_gguf(tmp_path / "tiny.gguf", ref.config, gguf_tensors(ref))
    model, tokenizer = load_gguf(tmp_path / "tiny.gguf")
    ref.load_state_dict(stored_weights(ref))
    assert model.config == ref.config
    assert (model.lm_head.weight is model.embed.weight) == tie
    assert not model.training
    ids = torch.randint(0, ref.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ref(ids), model(ids)
    assert expected.abs().max() > 1.0  # logits far from flat
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert tokenizer.encode("hello world") == [TOKENS.index(t) for t in ("hell", "o", "Ġw", "o", "r", "l", "d")]


def test_tiny_gguf_loads_in_bfloat16(tmp_path):
    ref = random_model(tiny_config())
    write_gguf(tmp_path / "tiny.gguf", ref.config, gguf_tensors(ref))
    full, _ = load_gguf(tmp_path / "tiny.gguf")
    half, _ = load_gguf(tmp_path / "tiny.gguf", dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.rope_inv_freq.dtype == torch.float32  # derived buffers keep their precision
    for (name, a), (_, b) in zip(full.named_parameters(), half.named_parameters()):
        assert torch.equal(a.to(torch.bfloat16), b), name  # the same values, rounded once


def test_rope_freqs_tensor_becomes_llama3_scaling(tmp_path):
    """Llama 3.1 files carry per-frequency divisors (rope_freqs) instead of scaling parameters."""
    from hybridlm.nn.positions import rope_inv_freq

    cfg = tiny_config(rope_scaling="llama3", rope_factor=8.0, rope_original_max_seq_len=64, rope_theta=10000.0)
    divisors = rope_inv_freq(cfg.replace(rope_scaling="none")) / rope_inv_freq(cfg)  # as llama.cpp writes them
    assert divisors.max() == 8.0 and divisors.min() == 1.0
    tensors = gguf_tensors(random_model(cfg)) | {"rope_freqs.weight": divisors.numpy()}
    write_gguf(tmp_path / "l3.gguf", cfg, tensors, extra=lambda w: w.add_rope_scaling_orig_ctx_len(64))
    assert read_gguf_config(tmp_path / "l3.gguf") == cfg
    write_gguf(tmp_path / "bare.gguf", cfg, tensors)  # no original context: 8192 is assumed, and does not fit
    with pytest.raises(CheckpointError, match="rope_freqs"):
        read_gguf_config(tmp_path / "bare.gguf")


# -- errors ----------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_gguf(tmp_path / "nope.gguf")


def test_not_a_gguf_file(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        load_gguf(tmp_path / "x.gguf")


def test_truncated_gguf(tmp_path):
    ref = random_model(tiny_config())
    write_gguf(tmp_path / "tiny.gguf", ref.config, gguf_tensors(ref))
    data = (tmp_path / "tiny.gguf").read_bytes()
    for cut in (100, len(data) // 2):  # inside the metadata, inside the tensor data
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_gguf(tmp_path / "cut.gguf")


def test_unsupported_architecture(tmp_path):
    w = GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    w.add_block_count(2)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="architecture 'mamba' is not supported.*'llama'") as info:
        load_gguf(tmp_path / "mamba.gguf")
    assert "\n" not in str(info.value)


def test_unsupported_tensor_type(tmp_path):
    ref = random_model(tiny_config())

    def types(name, array):
        return Q.Q5_0 if name == "blk.1.ffn_down.weight" else tensor_type(name, array)

    write_gguf(tmp_path / "q5.gguf", ref.config, gguf_tensors(ref), types=types)
    with pytest.raises(CheckpointError, match="blk.1.ffn_down.weight has GGUF type Q5_0"):
        load_gguf(tmp_path / "q5.gguf")


def test_missing_tensor(tmp_path):
    ref = random_model(tiny_config())
    tensors = gguf_tensors(ref)
    del tensors["blk.0.ffn_up.weight"]
    write_gguf(tmp_path / "missing.gguf", ref.config, tensors)
    with pytest.raises(CheckpointError, match="lacks tensors.*blk.0.ffn_up.weight"):
        load_gguf(tmp_path / "missing.gguf")


# -- the real model: SmolLM2-135M-Instruct Q4_1 against transformers -------------------------------
@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return load_gguf(smollm2_gguf)


@pytest.fixture(scope="module")
def hf_smollm2(smollm2_gguf):
    import transformers  # reading GGUF also needs accelerate, in the test extras

    path = smollm2_gguf
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                             dtype=torch.float32).eval()


def test_real_config_is_the_preset(smollm2_gguf):
    assert read_gguf_config(smollm2_gguf) == get_preset("smollm2-135m")


def test_real_logits_match_transformers(smollm2, hf_smollm2, pydoc_text):
    """Tolerance: max |ours - theirs| <= 1e-3 * max |theirs| over 256 positions x 49152 logits."""
    model, tokenizer = smollm2
    ids = torch.tensor([tokenizer.encode(pydoc_text[:4000])[:256]])
    assert ids.shape[1] == 256
    with torch.no_grad():
        ours, theirs = model(ids), hf_smollm2(ids).logits
    scale = theirs.abs().max()
    assert (ours - theirs).abs().max() <= 1e-3 * scale
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_real_greedy_continuations_match_transformers(smollm2, hf_smollm2, pydoc_text):
    model, tokenizer = smollm2
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": "Explain what a Python list is."}]),
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        pydoc_text[:600],
    ]
    lengths = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        cache, out, step = model.new_cache(1), [], torch.tensor([ids])
        with torch.no_grad():
            while len(out) < 64 and (not out or out[-1] not in tokenizer.eos_token_ids):
                out.append(int(model(step, cache, last_only=True)[0, -1].argmax()))
                step = torch.tensor([out[-1:]])
            theirs = hf_smollm2.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                         max_new_tokens=64, do_sample=False, pad_token_id=2)
        assert out == theirs[0, len(ids):].tolist(), prompt[:40]
        lengths.append(len(out))
    assert lengths.count(64) >= 2  # most prompts run the full 64 tokens without stopping


def test_real_perplexity_matches_transformers(smollm2, hf_smollm2, pydoc_text):
    """Perplexity over 3072 tokens of pydoc text (six 512-token windows) within 0.5%."""
    model, tokenizer = smollm2
    ids = torch.tensor(tokenizer.encode(pydoc_text[20000:80000])[:3072]).view(6, 512)

    def nll(logits):
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")

    with torch.no_grad():
        ours = torch.exp(nll(model(ids)) / ids[:, 1:].numel())
        theirs = torch.exp(nll(hf_smollm2(ids).logits) / ids[:, 1:].numel())
    assert 2.0 < theirs < 100.0  # a real model on real text
    assert abs(ours / theirs - 1) < 0.005
