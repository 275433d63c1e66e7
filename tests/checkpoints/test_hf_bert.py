"""HF BERT in and out: tiny random BertModel / BertForMaskedLM parity (1e-4) and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from hybridlm.checkpoints import hf_bert
from hybridlm.checkpoints.errors import CheckpointError
from hybridlm.models.encoder import Encoder

VOCAB = 150
_SHAPE = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
              max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
CASES = {"model": (transformers.BertModel, {}), "mlm": (transformers.BertForMaskedLM, {}),
         "mlm-untied-gelu-new": (transformers.BertForMaskedLM, dict(tie_word_embeddings=False, hidden_act="gelu_new"))}


def make_hf_model(case: str, seed: int = 0):
    cls, extra = CASES[case]
    torch.manual_seed(seed)
    model = cls(transformers.BertConfig(**_SHAPE, **extra)).float().eval()
    with torch.no_grad():  # off the (ones, zeros) init of norms and biases
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 3:] = 0
    return ids, mask, torch.randint(0, 2, (3, 12), generator=g)


def _reference(hf, ids, mask, types):
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _ours(model, ids, mask, types):
    with torch.no_grad():
        return model(ids, mask, types) if model.mlm is not None else model.encode(ids, mask, types)


@pytest.mark.parametrize("case", list(CASES))
def test_loaded_model_matches_transformers(case, saved):
    hf, path = saved(case)
    model = hf_bert.load_bert(path)
    assert isinstance(model, Encoder)
    ids, mask, types = _inputs()
    real = mask.bool()
    torch.testing.assert_close(_ours(model, ids, mask, types)[real], _reference(hf, ids, mask, types)[real],
                               atol=1e-4, rtol=1e-4)
    if case == "model":
        with torch.no_grad():
            pooled = model.pooled(model.encode(ids, mask, types))
            ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).pooler_output
        torch.testing.assert_close(pooled, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_saved_model_loads_in_transformers(case, saved, tmp_path):
    hf, path = saved(case)
    model = hf_bert.load_bert(path)
    hf_bert.save_bert(model, tmp_path / "out")
    again = CASES[case][0].from_pretrained(tmp_path / "out").eval()
    ids, mask, types = _inputs(2)
    real = mask.bool()
    torch.testing.assert_close(_reference(again, ids, mask, types)[real], _reference(hf, ids, mask, types)[real],
                               atol=1e-5, rtol=1e-5)
    # and it reloads into an equal model of ours
    assert hf_bert.load_bert(tmp_path / "out").config == model.config


def test_unsupported_and_broken_checkpoints_are_clear(saved, tmp_path):
    _, path = saved("model")
    bad = tmp_path / "relative"
    bad.mkdir()
    cfg = json.loads((path / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "position_embedding_type": "relative_key"}))
    (bad / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="position_embedding_type"):
        hf_bert.load_bert(bad)
    from safetensors.torch import load_file, save_file

    sd = load_file(path / "model.safetensors")
    del sd["encoder.layer.1.output.dense.weight"]
    short = tmp_path / "short"
    short.mkdir()
    (short / "config.json").write_text(json.dumps(cfg))
    save_file(sd, short / "model.safetensors")
    with pytest.raises(CheckpointError, match="lacks 1 tensors.*encoder.layer.1.output.dense.weight"):
        hf_bert.load_bert(short)


def test_configs_without_a_bert_layout_are_refused():
    from hybridlm.presets import get_preset

    with pytest.raises(CheckpointError, match="norm_position"):
        hf_bert.config_to_hf(get_preset("bert-tiny", norm_position="pre"))
