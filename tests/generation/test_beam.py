"""Beam search against transformers' `generate(num_beams=k, do_sample=False)` on the same weights."""

import pytest
import torch

from hybridlm.generation import SamplingConfig, beam_search, generate

PROMPT = [5, 17, 99, 3, 42, 8, 77]
MAX_NEW = 12


def hf_beams(hf, num_beams, length_penalty, eos, early_stopping):
    """transformers' num_beams hypotheses, best first: (generated ids with EOS, score)."""
    from transformers import GenerationConfig

    config = GenerationConfig(num_beams=num_beams, num_return_sequences=num_beams, do_sample=False,
                              max_new_tokens=MAX_NEW, length_penalty=length_penalty, early_stopping=early_stopping,
                              eos_token_id=eos, pad_token_id=0 if eos is None else eos,
                              return_dict_in_generate=True, output_scores=True)
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    hypotheses = []
    for seq, score in zip(out.sequences[:, len(PROMPT):].tolist(), out.sequences_scores.tolist()):
        if eos is not None and eos in seq:
            seq = seq[: seq.index(eos) + 1]  # pad == eos fills the rest
        hypotheses.append((seq, score))
    return hypotheses


def ours_as_hf(result, eos):
    return [(h.tokens + ([eos] if h.finish_reason == "eos" else []), h.score) for h in result.hypotheses]


def assert_same_hypotheses(ours, theirs):
    assert [seq for seq, _ in ours] == [seq for seq, _ in theirs]
    torch.testing.assert_close(torch.tensor([s for _, s in ours]), torch.tensor([s for _, s in theirs]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_beams", [2, 4])
def test_beam_search_matches_transformers_without_eos(hf_llama_pair, num_beams):
    hf, ours = hf_llama_pair
    result = beam_search(ours, PROMPT, num_beams, MAX_NEW, eos_token_ids=())
    assert_same_hypotheses(ours_as_hf(result, None), hf_beams(hf, num_beams, 1.0, None, False))
    assert all(h.finish_reason == "length" and len(h.tokens) == MAX_NEW for h in result.hypotheses)


@pytest.mark.parametrize("num_beams, eos_at", [(2, 8), (4, 7)])
@pytest.mark.parametrize("length_penalty, early_stopping", [(1.0, False), (2.0, False), (0.5, True), (-1.0, "never")])
def test_beam_search_matches_transformers_with_eos(hf_llama_pair, num_beams, eos_at, length_penalty, early_stopping):
    hf, ours = hf_llama_pair
    # an EOS the search can reach: a token of the best beam found without EOS
    eos = beam_search(ours, PROMPT, num_beams, MAX_NEW, eos_token_ids=()).best[eos_at]
    result = beam_search(ours, PROMPT, num_beams, MAX_NEW, length_penalty, eos_token_ids=[eos],
                         early_stopping=early_stopping)
    assert_same_hypotheses(ours_as_hf(result, eos), hf_beams(hf, num_beams, length_penalty, eos, early_stopping))
    if length_penalty <= 1.0:  # (a length penalty of 2 lets the longer, EOS-free beams win here)
        assert any(h.finish_reason == "eos" for h in result.hypotheses)


def test_length_penalty_changes_the_winner(hf_llama_pair):
    _, ours = hf_llama_pair
    eos = beam_search(ours, PROMPT, 2, MAX_NEW, eos_token_ids=()).best[8]
    short = beam_search(ours, PROMPT, 2, MAX_NEW, length_penalty=1.0, eos_token_ids=[eos])
    long = beam_search(ours, PROMPT, 2, MAX_NEW, length_penalty=2.0, eos_token_ids=[eos])
    assert len(long.best) > len(short.best)  # a larger penalty exponent favours longer hypotheses


@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_one_beam_is_greedy(hf_llama_pair, cache_kind):
    _, ours = hf_llama_pair
    greedy = generate(ours, [PROMPT], SamplingConfig(temperature=0, max_new_tokens=MAX_NEW, eos_token_ids=()))
    assert beam_search(ours, PROMPT, 1, MAX_NEW, eos_token_ids=(), cache_kind=cache_kind).best == greedy.tokens[0]


def test_static_and_dynamic_caches_agree(hf_llama_pair):
    _, ours = hf_llama_pair
    runs = [beam_search(ours, PROMPT, 3, MAX_NEW, eos_token_ids=(), cache_kind=k) for k in ("dynamic", "static")]
    assert ours_as_hf(runs[0], None) == ours_as_hf(runs[1], None)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=[]), "empty"),
    (dict(prompt=[500]), "outside"),
    (dict(num_beams=0), "num_beams"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(early_stopping="sometimes"), "early_stopping"),
])
def test_invalid_arguments_raise(hf_llama_pair, kwargs, message):
    _, ours = hf_llama_pair
    args = {**dict(prompt=PROMPT, num_beams=2, max_new_tokens=4), **kwargs}
    with pytest.raises(ValueError, match=message):
        beam_search(ours, **args)
