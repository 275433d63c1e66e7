"""HF T5 in and out: tiny random T5ForConditionalGeneration parity (logits 1e-4, same greedy and
beam output as transformers' generate) and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from hybridlm.checkpoints import hf_t5
from hybridlm.checkpoints.errors import CheckpointError
from hybridlm.generation import SamplingConfig, beam_search, generate
from hybridlm.models.seq2seq import Seq2Seq

VOCAB = 120
_SHAPE = dict(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4, dropout_rate=0.0,
              relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0,
              eos_token_id=1, pad_token_id=0)
CASES = {"v1.0-relu": dict(feed_forward_proj="relu"),  # tied head, scaled decoder output
         "v1.1-gated-gelu": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
         "deeper-decoder": dict(feed_forward_proj="gated-gelu", num_decoder_layers=3)}


def make_hf_model(case: str, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**_SHAPE, **CASES[case])).float().eval()
    with torch.no_grad():  # norms off their ones; small enough that greedy outputs vary
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "layer_norm" in name else 0.02))
    return model


def _source(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (3, 14), generator=g)
    mask = torch.ones(3, 14, dtype=torch.long)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    return ids * mask, mask  # padding is token 0


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case, saved):
    hf, path = saved(case)
    model = hf_t5.load_t5(path)
    assert isinstance(model, Seq2Seq)
    assert model.config.scale_decoder_output == (case != "v1.1-gated-gelu")
    ids, mask = _source()
    decoder_ids = torch.randint(2, VOCAB, (3, 11), generator=torch.Generator().manual_seed(3))
    decoder_ids[:, 0] = 0
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        ours = model(ids, decoder_ids, mask)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def _until_eos(tokens: list[int]) -> list[int]:
    """transformers' output after the start token, cut before EOS (id 1) as ours is."""
    return tokens[: tokens.index(1)] if 1 in tokens else tokens


@pytest.mark.parametrize("case", ["v1.0-relu", "v1.1-gated-gelu"])  # transformers' own cache breaks on deeper decoders
def test_greedy_and_beam_outputs_match_transformers(case, saved):
    hf, path = saved(case)
    model = hf_t5.load_t5(path)
    ids, mask = _source(5)
    # a random model repeats one token; the repetition penalty (the same CTRL rule on both sides)
    # makes each step depend on the history, so the comparison covers the cache
    greedy = SamplingConfig(max_new_tokens=10, temperature=0.0, repetition_penalty=5.0)
    outputs = []
    for row in range(3):
        source = ids[row:row + 1, : int(mask[row].sum())]
        bound = model.bind(source)
        with torch.no_grad():
            want = hf.generate(input_ids=source, max_new_tokens=10, do_sample=False, num_beams=1,
                               repetition_penalty=5.0)[0, 1:].tolist()
            want_beam = hf.generate(input_ids=source, max_new_tokens=10, do_sample=False, num_beams=3)[0, 1:].tolist()
        got = generate(bound, bound.start_ids, greedy).tokens[0]
        assert got == _until_eos(want)
        assert beam_search(bound, [0], 3, 10).best == _until_eos(want_beam)
        outputs.append(got)
    assert max(len(set(o)) for o in outputs) >= 5  # not a degenerate comparison


def test_batched_padded_sources_generate_as_each_alone(saved):
    _, path = saved("v1.1-gated-gelu")
    model = hf_t5.load_t5(path)
    ids, mask = _source(7)
    sampling = SamplingConfig(max_new_tokens=8, temperature=0.0, ignore_eos=True)
    bound = model.bind(ids, mask)
    together = generate(bound, bound.start_ids, sampling).tokens
    for row in range(3):
        alone = model.bind(ids[row:row + 1, : int(mask[row].sum())])
        assert generate(alone, alone.start_ids, sampling).tokens[0] == together[row]


@pytest.mark.parametrize("case", list(CASES))
def test_saved_model_loads_in_transformers(case, saved, tmp_path):
    hf, path = saved(case)
    model = hf_t5.load_t5(path)
    hf_t5.save_t5(model, tmp_path / "out")
    again = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    ids, mask = _source(2)
    decoder_ids = torch.zeros(3, 4, dtype=torch.long)
    with torch.no_grad():
        a = again(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        b = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert hf_t5.load_t5(tmp_path / "out").config == model.config


def test_untied_head_round_trips_through_our_layout(tmp_path):
    from hybridlm.presets import get_preset

    torch.manual_seed(0)
    model = Seq2Seq(get_preset("t5-tiny", tie_embeddings=False)).eval()
    hf_t5.save_t5(model, tmp_path / "m")
    again = hf_t5.load_t5(tmp_path / "m")
    assert not again.config.tie_embeddings
    ids = torch.randint(2, 100, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(again(ids, ids), model(ids, ids))


def test_bad_checkpoints_are_clear(saved, tmp_path):
    _, path = saved("v1.0-relu")
    cfg = json.loads((path / "config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**cfg, "feed_forward_proj": "gated-tanh"}))
    (bad / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="feed_forward_proj"):
        hf_t5.load_t5(bad)
    from hybridlm.presets import get_preset

    with pytest.raises(CheckpointError, match="position"):
        hf_t5.config_to_hf(get_preset("transformer-tiny"))
