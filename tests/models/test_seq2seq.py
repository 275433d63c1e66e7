"""The encoder-decoder: cached decoding equals teacher forcing, the source is encoded once per
request, both configurations (original Transformer, T5) run, fast == reference attention."""

import pytest
import torch

from hybridlm.config import ConfigError
from hybridlm.generation import SamplingConfig, beam_search, generate
from hybridlm.models.seq2seq import Seq2Seq
from hybridlm.presets import get_preset

PRESETS = ["t5-tiny", "transformer-tiny"]


def _model(name: str, **kw) -> Seq2Seq:
    torch.manual_seed(0)
    return Seq2Seq(get_preset(name, vocab_size=97, **kw)).eval()


@pytest.mark.parametrize("name", PRESETS)
def test_cached_steps_equal_teacher_forcing(name):
    model = _model(name)
    src, mask = torch.randint(2, 97, (2, 9)), torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    dec = torch.randint(2, 97, (2, 7))
    with torch.no_grad():
        full = model(src, dec, mask)
        bound = model.bind(src, mask)
        cache = bound.new_cache(2)
        steps = [bound(dec[:, :3], cache)]  # a 3-token prefill, then one token at a time
        steps += [bound(dec[:, i:i + 1], cache) for i in range(3, 7)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", PRESETS)
def test_sdpa_matches_the_reference_attention(name):
    fast = _model(name)
    ref = Seq2Seq(fast.config.replace(attn_impl="ref")).eval()
    ref.load_state_dict(fast.state_dict())
    src, dec = torch.randint(2, 97, (2, 8)), torch.randint(2, 97, (2, 5))
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    with torch.no_grad():
        torch.testing.assert_close(fast(src, dec, mask), ref(src, dec, mask), atol=1e-5, rtol=1e-5)


def test_source_padding_does_not_change_the_output():
    model = _model("t5-tiny")
    src, dec = torch.randint(2, 97, (1, 6)), torch.randint(2, 97, (1, 4))
    padded = torch.cat((src, torch.zeros(1, 3, dtype=torch.long)), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded, dec, torch.tensor([[1] * 6 + [0] * 3])), model(src, dec),
                                   atol=1e-5, rtol=1e-5)


def test_source_and_cross_kv_are_computed_once_per_request():
    model = _model("t5-tiny")
    calls = {"encoder": 0, "cross_kv": 0}
    model.encoder.blocks[0].register_forward_hook(lambda *_: calls.__setitem__("encoder", calls["encoder"] + 1))
    for block in model.decoder_blocks[1::3]:
        block.mixer.wkv.register_forward_hook(lambda *_: calls.__setitem__("cross_kv", calls["cross_kv"] + 1))
    bound = model.bind(torch.randint(2, 97, (1, 10)))
    out = generate(bound, bound.start_ids, SamplingConfig(max_new_tokens=12, temperature=0.0, ignore_eos=True))
    assert len(out.tokens[0]) == 12
    beam_search(bound, [0], 4, 8, eos_token_ids=())
    assert calls == {"encoder": 1, "cross_kv": model.config.n_decoder_layers}


def test_beam_search_fans_the_source_out_and_its_best_beam_scores_highest():
    model = _model("transformer-tiny")
    src = torch.randint(2, 97, (1, 7))
    result = beam_search(model.bind(src), [0], 3, 6, eos_token_ids=())
    best = result.hypotheses[0]
    with torch.no_grad():  # rescore the best beam with one teacher-forced forward
        dec = torch.tensor([[0] + best.tokens])
        logits = model(src, dec)
    log_prob = torch.log_softmax(logits[0, :-1].float(), -1).gather(1, dec[0, 1:, None]).sum()
    assert log_prob.item() == pytest.approx(best.log_prob, abs=1e-4)
    assert len(result.hypotheses) == 3 and all(best.score >= h.score for h in result.hypotheses)


def test_config_errors():
    with pytest.raises(ConfigError, match="family"):
        Seq2Seq(get_preset("llama-tiny"))
    with pytest.raises(ConfigError, match="positions"):
        Seq2Seq(get_preset("t5-tiny", position="rope"))
    with pytest.raises(ConfigError, match="Mamba"):
        get_preset("t5-tiny", layer_pattern="M-")
