"""Speculative decoding in the engine: the same greedy tokens as without it, for dense and hybrid
models, under continuous batching, preemption and prefix caching; no block leaks."""

import pytest

from hybridlm.engine import ConfigError, EngineConfig, RequestParams
from tests.engine.conftest import alone, prompts_of, run, small_engine, tokens_of
from tests.generation.conftest import random_decoder

SPEC = dict(speculative="prompt-lookup", num_speculative_tokens=3)


class OracleLookup:
    """Stands in for the prompt-lookup proposer: proposes each sequence's known greedy continuation
    with every third token wrong, so drafts are partly accepted and rollbacks of every length
    happen (random models do not copy their prompts, so real lookups would just be rejected)."""

    def __init__(self, answers: dict[tuple, list[int]]):
        self.answers = answers  # prompt -> greedy continuation

    def lookup(self, tokens, limit):
        for prompt, answer in self.answers.items():
            if tuple(tokens[:len(prompt)]) == prompt:
                done = len(tokens) - len(prompt)
                guess = list(answer[done:done + limit])
                return [t if (done + i) % 3 else (t + 1) % 1024 for i, t in enumerate(guess)]
        return []


def oracle_engine(model, prompts, max_tokens, **overrides):
    engine = small_engine(model, **{**SPEC, **overrides})
    engine.speculator.proposer = OracleLookup({tuple(p): alone(model, p, max_tokens) for p in prompts})
    return engine


def leaked_blocks(engine) -> int:
    """Blocks still referenced once every request is done, beyond the tails kept by Mamba snapshots."""
    engine.pool.check()
    kept = set() if engine.snapshots is None else {s.tail_block for s in engine.snapshots.entries.values()} - {None}
    return engine.pool.n_used - len(kept)


@pytest.mark.parametrize("preset", ["llama-tiny", "nemotron-h-tiny"])
def test_speculative_engine_gives_each_request_its_greedy_tokens(preset):
    model = random_decoder(preset)
    prompts = prompts_of([5, 40, 17, 90, 3, 23])
    params = RequestParams(max_tokens=12, temperature=0, ignore_eos=True)
    engine = oracle_engine(model, prompts, 12)
    arrivals = {0: [("a", prompts[0], params), ("b", prompts[1], params)], 2: [("c", prompts[2], params)],
                3: [("d", prompts[3], params)], 7: [("e", prompts[4], params), ("f", prompts[5], params)]}
    outs = run(engine, arrivals)
    for rid, prompt in zip("abcdef", prompts):
        assert tokens_of(outs[rid]) == alone(model, prompt, 12), rid
        assert outs[rid][-1].finish_reason == "length" and outs[rid][-1].completion_tokens == 12
    m = engine.metrics()
    assert 0 < m["spec_accepted_tokens"] < m["spec_draft_tokens"]
    assert m["generation_tokens_total"] == 6 * 12
    assert leaked_blocks(engine) == 0


@pytest.mark.parametrize("preset", ["llama-tiny", "nemotron-h-tiny"])
def test_speculation_with_preemption_and_tiny_blocks(preset):
    model = random_decoder(preset)
    prompts = prompts_of([30, 28, 25, 20])
    per_token = small_engine(model).capacity(1).kv_bytes_per_token
    engine = oracle_engine(model, prompts, 14, kv_memory=18 * 4 * per_token, block_size=4)
    outs = engine.generate(prompts, RequestParams(max_tokens=14, temperature=0, ignore_eos=True))
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == alone(model, prompt, 14)
    assert engine.metrics()["spec_accepted_tokens"] > 0
    assert leaked_blocks(engine) == 0


def test_hybrid_next_turn_resumes_from_the_state_a_speculating_request_left():
    """The finish snapshot of a request that accepted drafts holds exactly its computed tokens:
    the next turn, resuming from it, matches generating that turn alone."""
    model = random_decoder("nemotron-h-tiny")
    first = prompts_of([21])[0]
    answer = alone(model, first, 12)
    stop = next(i for i in range(5, 12) if answer[i] not in answer[:i])  # its token first appears there
    eos = answer[stop]
    engine = oracle_engine(model, [first], 12)
    out = engine.generate([first], RequestParams(max_tokens=12, temperature=0, eos_token_ids=(eos,)))[0]
    assert out.token_ids == answer[:stop] and engine.metrics()["spec_accepted_tokens"] > 0
    second = first + answer[:stop + 1] + prompts_of([5], seed=1)[0]
    engine.speculator.proposer = OracleLookup({tuple(second): alone(model, second, 6)})
    out = engine.generate([second], RequestParams(max_tokens=6, temperature=0, ignore_eos=True))[0]
    assert out.token_ids == alone(model, second, 6)
    assert out.cached_tokens == len(first) + stop  # resumed from the snapshot at the end of turn one


def test_penalised_and_logprob_requests_decode_plainly_beside_speculating_ones(dense):
    prompts = prompts_of([12, 15])
    engine = oracle_engine(dense, prompts, 8)
    plain = RequestParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=True)
    outs = engine.generate(prompts, [plain, RequestParams(max_tokens=8, temperature=0, ignore_eos=True)])
    assert [o.token_ids for o in outs] == [alone(dense, p, 8) for p in prompts]
    assert len(outs[0].logprobs) == 8  # one entry per token: it never took the speculative path


def test_sampling_with_speculation_is_reproducible(dense):
    prompt = prompts_of([10])[0]
    params = RequestParams(max_tokens=12, temperature=1.0, seed=5, ignore_eos=True)
    first = small_engine(dense, **SPEC).generate([prompt + prompt], params)[0].token_ids
    assert small_engine(dense, **SPEC).generate([prompt + prompt], params)[0].token_ids == first


def test_speculative_settings_are_checked(dense):
    with pytest.raises(ConfigError, match="num_speculative_tokens"):
        EngineConfig(speculative="prompt-lookup", num_speculative_tokens=0)
    with pytest.raises(ConfigError, match="prompt-lookup"):
        small_engine(dense, speculative="draft:blocks:2")
    with pytest.raises(ValueError, match="n-gram"):
        small_engine(dense, speculative="prompt-lookup:x")
