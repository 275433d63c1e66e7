"""Per-request sampling inside one batch, log-probabilities, stop conditions and text deltas."""

import math

import pytest
import torch

from hybridlm.engine import RequestParams
from hybridlm.generation import SamplingConfig, generate
from tests.engine.conftest import GREEDY, prompts_of, run, small_engine, tokens_of
from tests.generation.conftest import random_decoder


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(dense):
    prompt = prompts_of([12])[0]
    params = RequestParams(max_tokens=12, temperature=0.9, top_k=50, top_p=0.95, seed=123, ignore_eos=True)
    solo = small_engine(dense).generate([prompt], params)[0].token_ids
    others = [RequestParams(max_tokens=12, temperature=1.3, seed=s, ignore_eos=True) for s in (1, 2)]
    batched = small_engine(dense).generate([prompts_of([30])[0], prompt, prompts_of([7])[0]],
                                           [others[0], params, others[1]])[1].token_ids
    assert solo == batched
    # the same draws as `generate` with the same seed: the engine samples exactly as it does
    ref = generate(dense, [prompt], SamplingConfig(max_new_tokens=12, temperature=0.9, top_k=50, top_p=0.95,
                                                   seed=123, ignore_eos=True)).tokens[0]
    assert solo == ref
    different = small_engine(dense).generate([prompt], params.replace(seed=124))[0].token_ids
    assert different != solo


def test_greedy_and_sampled_requests_share_a_batch(dense):
    prompts = prompts_of([10, 10])
    outs = small_engine(dense).generate(prompts, [GREEDY, RequestParams(max_tokens=8, temperature=1.0, seed=0)])
    ref = generate(dense, [prompts[0]], SamplingConfig(max_new_tokens=8, temperature=0, ignore_eos=True)).tokens[0]
    assert outs[0].token_ids == ref and len(outs[1].token_ids) <= 8


def test_logprobs_are_the_models_and_top_logprobs_are_sorted(dense):
    prompt = prompts_of([9])[0]
    out = small_engine(dense).generate([prompt], GREEDY.replace(logprobs=True, top_logprobs=3))[0]
    assert len(out.logprobs) == len(out.token_ids)
    with torch.no_grad():
        logits = dense(torch.tensor([prompt]))[0, -1]
    expected = torch.log_softmax(logits.float(), -1)
    first = out.logprobs[0]
    assert first.token_id == out.token_ids[0] == int(expected.argmax())
    assert math.isclose(first.logprob, float(expected.max()), rel_tol=1e-4, abs_tol=1e-4)
    assert [t for t, _ in first.top] == expected.topk(3).indices.tolist()
    assert all(a[1] >= b[1] for e in out.logprobs for a, b in zip(e.top, e.top[1:]))


def test_penalties_change_the_choice_against_repeats(dense):
    prompt = prompts_of([6])[0]
    plain = small_engine(dense).generate([prompt], RequestParams(max_tokens=24, temperature=0, ignore_eos=True))[0]
    pen = small_engine(dense).generate([prompt], RequestParams(max_tokens=24, temperature=0, ignore_eos=True,
                                                               frequency_penalty=2.0, presence_penalty=2.0))[0]
    assert len(set(pen.token_ids)) > len(set(plain.token_ids))


def test_eos_and_stop_token_ids_end_a_request(dense):
    prompt = prompts_of([8])[0]
    free = small_engine(dense).generate([prompt], GREEDY)[0].token_ids
    out = small_engine(dense).generate([prompt], RequestParams(max_tokens=8, temperature=0,
                                                               eos_token_ids=(free[3],)))[0]
    assert out.token_ids == free[:free.index(free[3])] and out.finish_reason == "stop" and out.stop_reason is None
    out = small_engine(dense).generate([prompt], GREEDY.replace(stop_token_ids=(free[2],), ignore_eos=False))[0]
    assert out.finish_reason == "stop" and out.stop_reason == free[2]
    assert out.completion_tokens == len(out.token_ids) + 1  # the stop token is counted, not output


@pytest.fixture(scope="module")
def text_model():
    """A tiny random Llama over SmolLM2's real vocabulary, so text and stop strings are real."""
    return random_decoder("llama-tiny", vocab_size=49152, std=0.3)


def test_text_deltas_join_to_the_decoded_output(text_model, smollm2_tokenizer):
    tok = smollm2_tokenizer
    prompt = tok.encode("The quick brown fox")
    engine = small_engine(text_model, tok)
    outs = run(engine, {0: [("a", prompt, RequestParams(max_tokens=20, temperature=0, ignore_eos=True))]})["a"]
    assert len(outs) == 20
    assert "".join(o.text_delta for o in outs) == tok.decode(tokens_of(outs), skip_special_tokens=True)


def test_stop_string_cuts_the_text_and_is_never_streamed(text_model, smollm2_tokenizer):
    tok = smollm2_tokenizer
    prompt = tok.encode("Once upon a time")
    free = small_engine(text_model, tok).generate([prompt], RequestParams(max_tokens=20, temperature=0,
                                                                          ignore_eos=True))[0]
    text = free.text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assume_cut = text.index(stop)
    engine = small_engine(text_model, tok)
    outs = run(engine, {0: [("a", prompt, RequestParams(max_tokens=20, temperature=0, ignore_eos=True,
                                                         stop=(stop, "\x00never")))]})["a"]
    streamed = "".join(o.text_delta for o in outs)
    assert streamed == text[:assume_cut]
    assert outs[-1].finish_reason == "stop" and outs[-1].stop_reason == stop
    done = small_engine(text_model, tok).generate([prompt], RequestParams(max_tokens=20, temperature=0,
                                                                          ignore_eos=True, stop=(stop,)))[0]
    assert done.text == text[:assume_cut] and tok.decode(done.token_ids, skip_special_tokens=True) in text[:assume_cut]
