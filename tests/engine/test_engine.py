"""The engine against `generate`: a request's greedy tokens do not depend on batching, chunking,
preemption or the prefix cache, for dense, MoE and hybrid models."""

import pytest
import torch

from hybridlm.engine import Engine, EngineConfig, QueueFullError, RequestParams
from tests.engine.conftest import GREEDY, alone, prompts_of, run, small_engine, tokens_of
from tests.generation.conftest import random_decoder


@pytest.mark.parametrize("preset", ["llama-tiny", "nemotron-h-tiny", "mixtral-tiny", "gpt2-tiny", "mistral-tiny"])
def test_staggered_continuous_batching_equals_each_request_alone(preset):
    model = random_decoder(preset)
    prompts = prompts_of([5, 40, 17, 90, 3, 23])
    params = RequestParams(max_tokens=10, temperature=0, ignore_eos=True)
    arrivals = {0: [("a", prompts[0], params), ("b", prompts[1], params)], 2: [("c", prompts[2], params)],
                3: [("d", prompts[3], params)], 7: [("e", prompts[4], params), ("f", prompts[5], params)]}
    outs = run(small_engine(model), arrivals)
    for rid, prompt in zip("abcdef", prompts):
        assert tokens_of(outs[rid]) == alone(model, prompt, 10), rid
        assert outs[rid][-1].finished and outs[rid][-1].finish_reason == "length"


@pytest.mark.parametrize("preset", ["llama-tiny", "nemotron-h-tiny"])
def test_chunked_prefill_equals_one_shot_prefill(preset):
    """Same tokens and the same log-probabilities with 3-token chunks as with the whole prompt at once."""
    model = random_decoder(preset)
    prompts = prompts_of([37, 50])
    params = RequestParams(max_tokens=4, temperature=0, ignore_eos=True, logprobs=True, top_logprobs=5)
    chunked = small_engine(model, long_prefill=3).generate(prompts, params)
    whole = small_engine(model, long_prefill=64, max_num_batched_tokens=128).generate(prompts, params)
    for a, b in zip(chunked, whole):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close([e.logprob for e in a.logprobs], [e.logprob for e in b.logprobs],
                                   rtol=1e-4, atol=1e-4)
        assert [i for i, _ in a.logprobs[0].top] == [i for i, _ in b.logprobs[0].top]


@pytest.mark.parametrize("attention", ["gather", "ref"])
def test_attention_paths_give_the_native_tokens(dense, attention):
    prompts = prompts_of([12, 30, 7])
    native = small_engine(dense).generate(prompts, GREEDY)
    other = small_engine(dense, attention=attention).generate(prompts, GREEDY)
    assert [o.token_ids for o in other] == [o.token_ids for o in native]


@pytest.mark.parametrize("preset", ["llama-tiny", "nemotron-h-tiny"])
def test_preemption_by_recompute_keeps_greedy_tokens(preset):
    model = random_decoder(preset)
    prompts = prompts_of([30, 28, 25, 20])
    # 16 blocks of 4 tokens: the four sequences (~40 tokens each) cannot all stay resident
    per_token = small_engine(model).capacity(1).kv_bytes_per_token
    engine = small_engine(model, kv_memory=16 * 4 * per_token, block_size=4)
    params = RequestParams(max_tokens=14, temperature=0, ignore_eos=True)
    outs = engine.generate(prompts, params)
    assert engine.metrics()["preemptions"] > 0
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == alone(model, prompt, 14)
    assert engine.pool.n_used == (len({s.tail_block for s in engine.snapshots.entries.values()} - {None})
                                  if engine.snapshots is not None else 0)


def test_static_scheduling_gives_the_same_tokens(dense):
    prompts = prompts_of([12, 30, 7, 19])
    params = [RequestParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (3, 9, 5, 1)]
    static = small_engine(dense, scheduling="static", max_num_seqs=2).generate(prompts, params)
    for prompt, p, out in zip(prompts, params, static):
        assert out.token_ids == alone(dense, prompt, p.max_tokens)


def test_prefix_cache_hit_reports_cached_tokens_and_keeps_outputs(dense):
    engine = small_engine(dense)
    shared = prompts_of([35])[0]
    first = engine.generate([shared + [1, 2]], GREEDY)[0]
    before = engine.metrics()["computed_tokens_total"]
    second = engine.generate([shared + [3, 4, 5]], GREEDY)[0]
    assert first.cached_tokens == 0 and second.cached_tokens == 32  # two full 16-token blocks
    computed = engine.metrics()["computed_tokens_total"] - before
    assert computed == 38 - 32 + GREEDY.max_tokens - 1  # the suffix, then one token per decode step
    assert second.token_ids == alone(dense, shared + [3, 4, 5], GREEDY.max_tokens)
    m = engine.metrics()
    assert m["prefix_cache_queries"] == 37 + 38 and m["prefix_cache_hits"] == 32


def test_prefix_cache_salt_keeps_tenants_apart(dense):
    engine = small_engine(dense)
    shared = prompts_of([40])[0]
    engine.generate([shared], GREEDY.replace(cache_salt="a"))
    other = engine.generate([shared + [1]], GREEDY.replace(cache_salt="b"))[0]
    same = engine.generate([shared + [1]], GREEDY.replace(cache_salt="a"))[0]
    assert other.cached_tokens == 0 and same.cached_tokens == 32


def test_hybrid_shared_system_prompt_prefills_only_the_suffix(hybrid):
    engine = small_engine(hybrid)
    system = prompts_of([37])[0]
    a = system + [5, 6, 7, 8]
    b = system + [9, 10, 11]
    engine.generate([a], GREEDY, snapshot_at=[(len(system),)])
    before = engine.metrics()["computed_tokens_total"]
    out = engine.generate([b], GREEDY, snapshot_at=[(len(system),)])[0]
    assert out.cached_tokens == len(system)  # exactly: 2 full blocks + a 5-token tail block copied
    assert engine.metrics()["computed_tokens_total"] - before == 3 + GREEDY.max_tokens - 1
    assert out.token_ids == alone(hybrid, b, GREEDY.max_tokens)
    assert engine.metrics()["mamba_snapshot_hits"] == 1


def test_hybrid_without_hints_learns_the_junction(hybrid):
    """No snapshot_at: the second request finds cached KV but no state (a miss, reason recorded) and
    keeps one at the junction; the third resumes there."""
    engine = small_engine(hybrid)
    system = prompts_of([40])[0]
    outs = [engine.generate([system + [k, k + 1]], GREEDY)[0] for k in (1, 3, 5)]
    assert [o.cached_tokens for o in outs] == [0, 0, 32]
    m = engine.metrics()
    assert m["mamba_snapshot_misses"] == {"no_cached_prefix": 1, "no_snapshot": 1} and m["mamba_snapshot_hits"] == 1
    assert outs[2].token_ids == alone(hybrid, system + [5, 6], GREEDY.max_tokens)


@pytest.mark.parametrize("preset", ["nemotron-h-tiny", "llama-tiny"])
def test_multi_turn_chat_turn_n_prefills_only_its_new_tokens(preset):
    """Each assistant turn ends with EOS, which the next prompt repeats (as chat templates do), then
    the next user message: turn N computes exactly those new tokens."""
    model = random_decoder(preset)
    engine = small_engine(model)
    history = prompts_of([21])[0]
    for turn, user in enumerate(prompts_of([6, 9, 4], seed=1)):
        prompt = history + user
        expected = alone(model, prompt, 5)
        eos = expected[2]  # the turn ends with "EOS" as its third token
        before = engine.metrics()["computed_tokens_total"]
        out = engine.generate([prompt], RequestParams(max_tokens=5, temperature=0, eos_token_ids=(eos,)),
                              snapshot_at=[(len(prompt),)])[0]
        assert out.finish_reason == "stop" and out.token_ids == expected[:expected.index(eos)]
        decoded = out.completion_tokens - 1  # decode steps after the prompt's own step
        computed = engine.metrics()["computed_tokens_total"] - before - decoded
        new = len(user) + (1 if turn else 0)  # the previous turn's EOS is new to the cache
        if "mamba" in model.config.blocks or turn == 0:
            assert computed == (len(prompt) if turn == 0 else new), turn
        else:  # a dense model reuses whole blocks only: at most a block's worth more
            assert new <= computed < new + 16
        history = prompt + out.token_ids + [eos]


def test_abort_frees_blocks_at_once_and_is_idempotent(dense):
    engine = small_engine(dense)
    prompts = prompts_of([40, 20, 30])
    for i, p in enumerate(prompts):
        engine.add_request(p, RequestParams(max_tokens=50, temperature=0, ignore_eos=True), request_id=f"r{i}")
    engine.step()
    used = engine.pool.n_used
    assert used > 0
    engine.abort("r0")
    engine.abort("r0")
    engine.abort("nope")
    engine.abort("r2")
    assert engine.pool.n_used < used
    while engine.has_unfinished():
        assert all(o.request_id == "r1" for o in engine.step())
    assert engine.pool.n_used == 0 and engine.metrics()["requests_aborted"] == 2


def test_finished_records_are_dropped(dense):
    """A server's memory must not grow per request served: no record outlives its final output."""
    engine = small_engine(dense)
    for i, p in enumerate(prompts_of([12, 30])):
        engine.add_request(p, GREEDY.replace(max_tokens=3 + 5 * i), request_id=f"r{i}")
    finished = []
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                finished.append(out.request_id)
                assert out.request_id not in engine.requests
    assert finished == ["r0", "r1"] and engine.requests == {}
    assert engine.metrics()["requests_aborted"] == 0 and engine.metrics()["requests_finished"] == 2


def test_forward_failure_fails_the_step_and_frees_its_blocks(dense, monkeypatch):
    engine = small_engine(dense)
    engine.add_request(prompts_of([20])[0], GREEDY, request_id="x")
    calls = {"n": 0}
    real = engine.model.forward

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", flaky)
    outs = engine.step() + engine.step()
    assert outs[-1].finished and outs[-1].finish_reason == "error" and "boom" in outs[-1].error
    assert not engine.has_unfinished() and engine.pool.n_used == 0 and engine.metrics()["errors"] == 1
    monkeypatch.undo()
    assert engine.generate([prompts_of([9])[0]], GREEDY)[0].finish_reason == "length"  # still serving


def test_queue_bound_and_request_checks(dense):
    engine = small_engine(dense, max_queue=2)
    engine.add_request([1, 2], GREEDY)
    engine.add_request([1, 2], GREEDY, request_id="mine")
    with pytest.raises(QueueFullError):
        engine.add_request([1, 2], GREEDY)
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request([1], GREEDY, request_id="mine")
    with pytest.raises(ValueError, match="empty"):
        engine.add_request([], GREEDY)
    with pytest.raises(ValueError, match="outside"):
        engine.add_request([5000], GREEDY)
    with pytest.raises(ValueError, match="context"):
        engine.add_request([1] * 500, GREEDY.replace(max_tokens=100))
    with pytest.raises(ValueError, match="KV blocks"):
        small_engine(dense, kv_memory=4 * 16 * 2048).add_request([1] * 100, GREEDY)
    with pytest.raises(ValueError, match="stop strings need"):
        engine.add_request([1], GREEDY.replace(stop=("x",)))
    with pytest.raises(TypeError):
        engine.add_request([1], {"max_tokens": 3})


def test_capacity_matches_the_allocated_tensors():
    smol = random_decoder("smollm2-135m", n_layers=2, vocab_size=256)
    engine = Engine(smol, None, EngineConfig(kv_memory=8 << 20, max_num_seqs=4, max_num_batched_tokens=64))
    cap = engine.capacity(1000)
    assert cap.kv_bytes_per_token == 2 * 2 * 3 * 64 * 4  # 2 layers x K, V x 3 heads x 64 x float32
    assert cap.memory_bytes == engine.cache.nbytes()
    assert cap.max_seqs == min(4, cap.kv_blocks // 63)
    hyb = Engine(random_decoder("nemotron-h-tiny"), None, EngineConfig(kv_memory=1 << 20, mamba_state_memory=1 << 20,
                                                                     max_num_seqs=4, max_num_batched_tokens=64))
    cap = hyb.capacity(100)
    assert cap.state_bytes_per_seq > 0 and cap.snapshot_rows == (1 << 20) // cap.state_bytes_per_seq
    assert cap.memory_bytes == hyb.cache.nbytes()
    assert "prefix snapshots" in cap.describe()


def test_attention_free_model_runs_and_resumes_from_snapshots():
    model = random_decoder("nemotron-h-tiny", layer_pattern="M-M-")
    prompts = prompts_of([5, 30, 12])
    engine = small_engine(model)
    assert not engine.cache.kv_slots  # blocks are bookkeeping only
    for prompt, out in zip(prompts, engine.generate(prompts, GREEDY)):
        assert out.token_ids == alone(model, prompt, GREEDY.max_tokens)
    engine.generate([prompts[1][:20] + [1]], GREEDY, snapshot_at=[(20,)])
    out = engine.generate([prompts[1][:20] + [2]], GREEDY, snapshot_at=[(20,)])[0]
    assert out.cached_tokens == 20 and out.token_ids == alone(model, prompts[1][:20] + [2], GREEDY.max_tokens)


def test_reset_prefix_cache_forgets_blocks_and_snapshots(hybrid):
    engine = small_engine(hybrid)
    prompt = prompts_of([40])[0]
    engine.generate([prompt], GREEDY, snapshot_at=[(33,)])
    assert engine.metrics()["mamba_snapshots"] > 0 and engine.pool.n_cached > 0
    engine.reset_prefix_cache()
    assert engine.metrics()["mamba_snapshots"] == 0 and engine.pool.n_cached == 0 and engine.pool.n_used == 0
    assert engine.generate([prompt + [1]], GREEDY)[0].cached_tokens == 0


def test_quantized_linears_run_unchanged_through_the_engine():
    """Compression rewrites modules; the engine calls the same forward (RTN int8 here)."""
    from hybridlm.compress.api import quantize_model
    from hybridlm.compress.config import QuantizeConfig

    model = random_decoder("llama-tiny")
    quantize_model(model, QuantizeConfig(method="rtn", bits=8))
    prompts = prompts_of([9, 26])
    for prompt, out in zip(prompts, small_engine(model).generate(prompts, GREEDY)):
        assert out.token_ids == alone(model, prompt, GREEDY.max_tokens)
