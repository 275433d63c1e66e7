"""Speculative decoding gives exactly the plain greedy tokens, whatever the proposer guesses, for
dense and hybrid targets, batched or alone; plus the proposers themselves and the argument checks."""

import copy

import pytest
import torch

from hybridlm.generation import SamplingConfig, generate
from hybridlm.generation.proposers import (DraftModelProposer, PromptLookupProposer, Proposal,
                                           layer_skip_draft, make_proposer)
from hybridlm.generation.speculative import SpeculativeStats, speculative_generate
from hybridlm.models.decoder import Decoder

GREEDY = SamplingConfig(temperature=0, max_new_tokens=24, eos_token_ids=())


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a loaded 2-core machine torch's
    threads wait on each other: a width-128 matmul measured 3.5 ms with 2 threads, 0.1 ms with 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_prompts(lengths, vocab=1024, seed=0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]


class OracleProposer:
    """Proposes the known greedy continuation with every `every`-th token (counted over the whole
    output) replaced by a wrong one: acceptance is then partial, different per row and per round,
    so rollbacks of every length happen. A test device, not a real proposer."""

    def __init__(self, prompts, answers, every=3, vocab=1024):
        self.full = [p + a for p, a in zip(prompts, answers)]
        self.every, self.vocab = every, vocab

    def reset(self, batch_size):
        pass

    def propose(self, contexts, limits, sampling=None, generator=None):
        out = []
        for full, context, limit in zip(self.full, contexts, limits):
            guess = list(full[len(context):len(context) + limit])
            for i in range(len(guess)):
                if (len(context) + i) % self.every == 0:
                    guess[i] = (guess[i] + 1) % self.vocab
            out.append(guess)
        return Proposal(out, None)


def noisy_copy(model, std, seed=1):
    """The model with N(0, std) added to every weight: a draft that agrees with it often, not always."""
    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * std)
    return draft


MODELS = ["llama-tiny", "gpt2-tiny", "mistral-tiny", "nemotron-h-tiny"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("k, cache_kind", [(1, "dynamic"), (3, "static"), (6, "dynamic")])
def test_greedy_speculative_equals_greedy_with_partial_acceptance(make_decoder, name, k, cache_kind):
    model = make_decoder(name, **({"sliding_window": 16} if name == "mistral-tiny" else {}))
    prompts = random_prompts((5, 23, 40))
    plain = generate(model, prompts, GREEDY).tokens
    for batch in (prompts[:1], prompts):
        answers = plain[:len(batch)]
        result = speculative_generate(model, OracleProposer(batch, answers), batch, GREEDY, k=k,
                                      cache_kind=cache_kind)
        assert result.tokens == answers
        stats = result.stats
        assert 0 < stats.accepted < stats.proposed  # both acceptances and rejections happened
        assert stats.new_tokens == len(batch) * GREEDY.max_new_tokens
        if k > 1:
            assert stats.steps < GREEDY.max_new_tokens - 1  # it did save target forwards


@pytest.mark.parametrize("name", ["llama-tiny", "nemotron-h-tiny"])
def test_greedy_with_draft_models_and_prompt_lookup(make_decoder, name):
    model = make_decoder(name)
    prompts = [p + p[:12] for p in random_prompts((14, 30))]  # repeats, so n-grams recur
    plain = generate(model, prompts, GREEDY).tokens
    proposers = [PromptLookupProposer(), DraftModelProposer(noisy_copy(model, 0.02)),
                 DraftModelProposer(layer_skip_draft(model, 3)), DraftModelProposer(make_decoder(name, seed=7))]
    for proposer, cache_kind in zip(proposers, ["dynamic", "static", "dynamic", "static"]):
        result = speculative_generate(model, proposer, prompts, GREEDY, k=4, cache_kind=cache_kind)
        assert result.tokens == plain, type(proposer).__name__
    alone = speculative_generate(model, proposers[1], prompts[1:], GREEDY, k=4)  # the proposer is reused
    assert alone.tokens == plain[1:]


def test_a_draft_equal_to_the_target_is_always_accepted(make_decoder):
    model = make_decoder("nemotron-h-tiny")
    prompts = random_prompts((6, 17))
    sampling = GREEDY.replace(max_new_tokens=21)
    result = speculative_generate(model, DraftModelProposer(model), prompts, sampling, k=4)
    assert result.tokens == generate(model, prompts, sampling).tokens
    stats = result.stats
    assert isinstance(stats, SpeculativeStats)
    assert stats.acceptance_rate == 1.0 and stats.proposed == 2 * 16  # 4 rounds of 4 proposals
    assert stats.steps == 4 and stats.tokens_per_step == 5.0  # 1 + 4 rounds of 5 tokens
    assert {"acceptance_rate", "accepted_per_step", "tokens_per_step", "decode_tokens_per_s"} <= set(stats.as_dict())


def test_eos_and_stop_strings_end_rows_as_in_generate(make_decoder):
    model = make_decoder("llama-tiny")
    prompts = random_prompts((5, 23, 40))
    free = generate(model, prompts, GREEDY).tokens
    eos = next(t for i, t in enumerate(free[0]) if i >= 3 and t not in free[0][:i] and t not in free[1])
    sampling = GREEDY.replace(eos_token_ids=[eos])
    expected = generate(model, prompts, sampling)
    streamed = []
    result = speculative_generate(model, OracleProposer(prompts, free), prompts, sampling, k=4,
                                  on_token=lambda row, t: streamed.append((row, t)))
    assert result.tokens == expected.tokens and result.finish_reasons == expected.finish_reasons
    assert result.finish_reasons[0] == "eos"
    assert sorted(streamed) == sorted((row, t) for row, toks in enumerate(result.tokens) for t in toks)

    decode = lambda ids: "".join(f"<{i}>" for i in ids)  # noqa: E731
    stop = SamplingConfig(temperature=0, max_new_tokens=24, eos_token_ids=(), stop=(f"<{free[1][6]}>",))
    expected = generate(model, prompts, stop, decode=decode)
    result = speculative_generate(model, OracleProposer(prompts, free), prompts, stop, k=5, decode=decode)
    assert (result.tokens, result.texts, result.finish_reasons) == (expected.tokens, expected.texts,
                                                                     expected.finish_reasons)
    assert "stop" in result.finish_reasons


def test_repetition_penalty_greedy_matches_generate(make_decoder):
    model = make_decoder("nemotron-h-tiny")
    prompts = random_prompts((8, 19))
    sampling = GREEDY.replace(repetition_penalty=1.3)
    plain = generate(model, prompts, sampling).tokens
    assert plain != generate(model, prompts, GREEDY).tokens  # the penalty changes the output
    for proposer in (OracleProposer(prompts, plain), DraftModelProposer(noisy_copy(model, 0.02))):
        assert speculative_generate(model, proposer, prompts, sampling, k=3).tokens == plain


def test_sampling_is_reproducible_with_a_seed(make_decoder):
    model = make_decoder("llama-tiny", std=0.1)
    prompts = random_prompts((6, 11))
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=16, seed=3, eos_token_ids=())
    draft = DraftModelProposer(noisy_copy(model, 0.05))
    first = speculative_generate(model, draft, prompts, sampling, k=3).tokens
    assert speculative_generate(model, draft, prompts, sampling, k=3).tokens == first
    assert speculative_generate(model, draft, prompts, sampling.replace(seed=4), k=3).tokens != first


def test_prompt_lookup_proposes_what_followed_the_latest_longest_match():
    lookup = PromptLookupProposer(max_ngram=3, min_ngram=1)
    #          0  1  2  3  4  5  6  7  8  9 10 11
    context = [5, 6, 7, 1, 2, 9, 6, 7, 3, 4, 6, 7]
    assert lookup.lookup(context, 3) == [3, 4, 6]  # (6, 7) last seen at 6-7; no 3-gram recurs
    assert lookup.lookup(context + [3], 2) == [4, 6]  # the 3-gram (6, 7, 3) wins over shorter ones
    assert lookup.lookup([1, 2, 3, 4], 5) == []
    assert lookup.lookup([8, 8], 4) == [8]  # a match right before the suffix proposes one token
    assert lookup.propose([[1, 2, 1], [3, 4, 3]], [2, 0]).tokens == [[2, 1], []]
    with pytest.raises(ValueError, match="min_ngram"):
        PromptLookupProposer(max_ngram=1, min_ngram=2)


def test_layer_skip_draft_shares_weights_and_is_the_truncated_model(make_decoder):
    model = make_decoder("nemotron-h-tiny")
    draft = layer_skip_draft(model, 4)
    assert draft.config.pattern == model.config.pattern[:4]
    assert draft.blocks[2].mixer.in_proj.weight is model.blocks[2].mixer.in_proj.weight
    assert draft.lm_head.weight is model.lm_head.weight
    # the same as a standalone model holding those weights
    alone = Decoder(draft.config).eval()
    alone.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith("blocks.") or int(k.split(".")[1]) < 4})
    ids = torch.tensor(random_prompts((12,)))
    with torch.no_grad():
        torch.testing.assert_close(draft(ids), alone(ids))
    with pytest.raises(ValueError, match="1 to 6"):
        layer_skip_draft(model, 7)


def test_arguments_are_checked(make_decoder):
    model = make_decoder("llama-tiny")
    with pytest.raises(ValueError, match="k "):
        speculative_generate(model, PromptLookupProposer(), [[1, 2]], GREEDY, k=0)
    with pytest.raises(ValueError, match="vocabulary"):
        other = DraftModelProposer(make_decoder("llama-tiny", vocab_size=512))
        speculative_generate(model, other, [[1, 2, 3]], GREEDY.replace(temperature=1.0), k=2)


def test_proposer_specs(make_decoder):
    model = make_decoder("llama-tiny")
    assert make_proposer("prompt-lookup", model).max_ngram == 3
    assert make_proposer("prompt-lookup:5", model).max_ngram == 5
    skip = make_proposer("draft:blocks:3", model)
    assert isinstance(skip, DraftModelProposer) and len(skip.draft.blocks) == 3
    other = make_decoder("llama-tiny", seed=3)
    assert make_proposer("draft:tiny", model, lambda name: other).draft is other
    for bad, message in [("lookup", "unknown speculative spec"), ("prompt-lookup:x", "n-gram"),
                         ("prompt-lookup:0", "n-gram"), ("draft:blocks:x", "number of blocks"), ("draft:blocks:8", "1 to 7"),
                         ("draft:tiny", "no loader")]:
        with pytest.raises(ValueError, match=message):
            make_proposer(bad, model)


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2 as `hybridlm generate` runs it by default on a CPU: Q4_1 weights kept quantized,
    int8 ("fast") activations, where a rounding difference can change a greedy token."""
    from hybridlm.checkpoints.registry import load_model
    from hybridlm.nn.quant import set_quant_modes

    loaded = load_model("smollm2-135m", keep_quantized=True)
    loaded.model.eval()
    assert set_quant_modes(loaded.model, act_mode="fast") > 0
    return loaded


def quote_prompt(tok, topic: str) -> list[int]:
    from pydoc_data.topics import topics

    messages = [{"role": "user", "content": "Here is a section of the Python documentation:\n\n"
                 f"{topics[topic].strip()}\n\nQuote its first paragraph exactly."}]
    return tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))


def test_smollm2_verification_forward_is_bit_identical_to_one_token_steps(smollm2):
    """With int8 activations the batched verification attention moves the logits by ~1 (see
    verify_attention.py); the decode-like one reproduces plain decoding's arithmetic exactly."""
    import functools

    from hybridlm.generation.verify_attention import decode_attention

    model = smollm2.model
    prompt = torch.tensor([quote_prompt(smollm2.tokenizer, "pass")[:60]])
    new = torch.tensor([[12, 345, 678, 910, 1112]])
    with torch.inference_mode():
        stepped_cache = model.new_cache(1)
        model(prompt, stepped_cache, last_only=True)
        stepped = torch.cat([model(new[:, i:i + 1], stepped_cache) for i in range(new.shape[1])], dim=1)
        for how in ("batched", "decode"):
            cache = model.new_cache(1)
            model(prompt, cache, last_only=True)
            if how == "decode":
                cache.attend_for = functools.partial(decode_attention, model.config)
            verified = model(new, cache)
            gap = float((verified - stepped).abs().max())
            assert gap == 0 if how == "decode" else gap < 5, how


def test_smollm2_prompt_lookup_gives_the_plain_greedy_tokens(smollm2):
    tok = smollm2.tokenizer
    sampling = SamplingConfig(temperature=0, max_new_tokens=32, ignore_eos=True)
    # "del": with batched verification attention the greedy tokens left plain decoding at token 11 (k=3)
    for topic, ks in (("assert", (5,)), ("del", (3,))):
        prompt = quote_prompt(tok, topic)
        plain = generate(smollm2.model, [prompt], sampling, cache_kind="static").tokens
        for k in ks:
            result = speculative_generate(smollm2.model, PromptLookupProposer(), [prompt], sampling, k=k,
                                          cache_kind="static")
            assert result.tokens == plain, (topic, k)
            if topic == "assert":
                assert result.stats.acceptance_rate > 0.3  # quoting: the prompt holds the answer
                assert result.stats.steps < 31 / 1.5  # so each target forward gave 1.5 tokens or more


def test_int8_kv_cache_rolls_back_too(make_decoder):
    model = make_decoder("llama-tiny")
    prompts = random_prompts((9, 26))
    plain = generate(model, prompts, GREEDY, kv_dtype="int8").tokens
    result = speculative_generate(model, OracleProposer(prompts, plain), prompts, GREEDY, k=4, kv_dtype="int8")
    assert result.tokens == plain and 0 < result.stats.accepted < result.stats.proposed
