"""The shared-context log-likelihood scorer (context prefilled once, choices batched) equals one full
forward per request, on a dense, a sliding-window, a MoE and a hybrid Mamba model; and the
multiple-choice metrics and prompts behave as lm-eval's."""

import random

import pytest
import torch

from hybridlm.eval.loglikelihood import fit_request, score, score_ref
from hybridlm.eval.multiple_choice import PromptFormat, build_requests, encode_pair, mc_metrics
from hybridlm.eval.loglikelihood import Score
from hybridlm.eval.tasks import MCItem
from hybridlm.models import build_model
from hybridlm.presets import get_preset


def make_model(preset: str):
    torch.manual_seed(0)
    m = build_model(get_preset(preset)).float().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


@pytest.fixture(scope="module", params=["llama-tiny", "mistral-tiny", "mixtral-tiny", "nemotron-h-tiny"])
def model(request):
    return make_model(request.param)


@pytest.fixture(scope="module", params=["llama-tiny", "nemotron-h-tiny"])
def dense_or_hybrid(request):
    return make_model(request.param)


@pytest.fixture(scope="module")
def llama():
    return make_model("llama-tiny")


def random_requests(vocab, n_items=2, n_choices=4, seed=0):
    rng = random.Random(seed)
    reqs = []
    for _ in range(n_items):
        ctx = [rng.randrange(vocab) for _ in range(rng.randrange(1, 72))]  # mistral-tiny's window is 64
        for _ in range(n_choices):
            reqs.append((ctx, [rng.randrange(vocab) for _ in range(rng.randrange(1, 9))]))
    rng.shuffle(reqs)  # groups are found by context, not by position
    return reqs


def test_shared_context_equals_one_forward_per_request(model):
    reqs = random_requests(model.config.vocab_size)
    fast, ref = score(model, reqs, impl="cache"), score(model, reqs, impl="ref")
    assert [s.n_tokens for s in fast] == [len(c) for _, c in reqs]
    for a, b in zip(fast, ref):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4, rel=1e-5)
        assert a.greedy == b.greedy
    assert len({round(s.logprob, 3) for s in ref}) > len(ref) // 2  # scores actually differ


def test_the_context_runs_once_per_group(dense_or_hybrid):
    model = dense_or_hybrid
    calls = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape))
    try:
        reqs = random_requests(model.config.vocab_size, n_items=3, n_choices=4, seed=1)
        score(model, reqs, impl="cache")
    finally:
        handle.remove()
    assert len(calls) <= 2 * 3  # one context prefill + one batched continuation forward per item (not 4 per item)


def test_greedy_flag_is_true_for_the_argmax_continuation(llama):
    model = llama
    ctx = [5, 9, 11, 3]
    with torch.no_grad():
        ids = list(ctx)
        for _ in range(3):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    cont = ids[len(ctx):]
    other = [(cont[0] + 1) % model.config.vocab_size] + cont[1:]
    fast = score(model, [(ctx, cont), (ctx, other)], impl="cache")
    assert fast[0].greedy and not fast[1].greedy and fast[0].logprob > fast[1].logprob


def test_too_long_is_an_error_unless_truncated(llama):
    model = llama
    limit = model.config.max_seq_len
    with pytest.raises(ValueError, match="longer than the model's context"):
        score(model, [(list(range(limit)), [1, 2])])
    ctx, cont = fit_request(model, list(range(limit + 10)), [1, 2], truncate=True)
    assert len(ctx) + len(cont) - 1 == limit and ctx[-1] == limit + 9
    [a] = score(model, [(list(range(limit + 10)), [1, 2])], truncate=True)
    [b] = score_ref(model, [(ctx, cont)])
    assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_encode_pair_moves_trailing_spaces_and_splits_after_the_context():
    words = {"a": 1, "b": 2, " b": 3, "  ": 4}

    def encode(text):  # greedy longest match over a toy vocabulary
        out, i = [], 0
        keys = sorted(words, key=len, reverse=True)
        while i < len(text):
            k = next(k for k in keys if text.startswith(k, i))
            out.append(words[k])
            i += len(k)
        return out

    assert encode_pair(encode, "a ", "b") == ([1], [3])  # the space joins the choice, as in lm-eval
    assert encode_pair(encode, "a", " b") == ([1], [3])


def test_metrics_accuracy_and_length_normalised():
    items = [MCItem("q", ["x", "longer answer"], 1), MCItem("q", ["aa", "b"], 0)]
    s = lambda v: Score(v, False, 1)  # noqa: E731
    # item 1: raw picks choice 0 (-1 > -2); per character picks choice 1 (-2/13 > -1/1)
    # item 2: raw picks choice 1; per character: -2/2 = -1 vs -1.5/1 -> choice 0
    res = mc_metrics(items, [[s(-1.0), s(-2.0)], [s(-2.0), s(-1.5)]])
    assert res.predictions == [0, 1] and res.accuracy == 0.0 and res.accuracy_norm == 1.0


def test_fewshot_prompts_use_the_examples_file_and_the_delimiters():
    examples = [MCItem(f"ex{i}", ["no", "yes"], 1) for i in range(5)]
    item = MCItem("Q", ["A", "B"], 0)
    seen = []
    build_requests([item], lambda t: seen.append(t) or list(t.encode()), PromptFormat(shots=2), examples)
    prompt = seen[1]  # encode(context + continuation), encode(context) for the first choice
    assert prompt.startswith("ex") and prompt.count("ex") == 2 and prompt.endswith("\n\nQ")
    assert prompt.count(" yes\n\n") == 2
    with pytest.raises(ValueError, match="3-shot prompts need 3 examples"):
        build_requests([item], lambda t: list(t.encode()), PromptFormat(shots=3), examples[:2])
