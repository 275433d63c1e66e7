import pytest
import torch

from hybridlm.generation import SamplingConfig, generate

GREEDY = SamplingConfig(temperature=0, max_new_tokens=20, eos_token_ids=())
PROMPT_LENS = (5, 23, 50)  # with 30 new tokens the longest passes mistral-tiny's 64-token window


def decode(ids: list[int]) -> str:
    return "".join(f"<{i}>" for i in ids)


def random_prompts(lengths=PROMPT_LENS, vocab=1024, seed=0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]


def argmax_loop(model, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding the obvious way: the whole sequence through the model for every token."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny", "mistral-tiny", "nemotron-h-tiny"])
@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_greedy_matches_argmax_with_full_recompute(make_decoder, name, cache_kind):
    model = make_decoder(name)
    prompt = random_prompts([50])[0]
    result = generate(model, [prompt], GREEDY, cache_kind=cache_kind)
    assert result.tokens[0] == argmax_loop(model, prompt, GREEDY.max_new_tokens)
    assert result.finish_reasons == ["length"]


VARIANTS = [("llama-tiny", {}), ("gpt2-tiny", {}), ("mistral-tiny", {}), ("qwen3-tiny", {}),
            ("llama-tiny", dict(position="alibi")), ("llama-tiny", dict(position="sinusoidal")),
            ("nemotron-h-tiny", {})]  # Mamba-2 layers: left padding must not leak into their state


@pytest.mark.parametrize("name, overrides", VARIANTS, ids=[n + "".join(o.values()) for n, o in VARIANTS])
@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_batched_generation_equals_each_prompt_alone(make_decoder, name, overrides, cache_kind):
    model = make_decoder(name, **overrides)
    prompts = random_prompts()
    sampling = GREEDY.replace(max_new_tokens=30)
    batched = generate(model, prompts, sampling, cache_kind=cache_kind)
    alone = [generate(model, [p], sampling, cache_kind=cache_kind).tokens[0] for p in prompts]
    assert batched.tokens == alone
    assert len({tuple(t) for t in alone}) == len(prompts)  # the rows really differ


def test_same_seed_same_tokens_different_seed_different_tokens(make_decoder):
    model = make_decoder("llama-tiny")
    prompts = random_prompts()
    sampling = SamplingConfig(temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=20, seed=1234, eos_token_ids=())
    rng = torch.get_rng_state()
    first, again = generate(model, prompts, sampling), generate(model, prompts, sampling)
    other = generate(model, prompts, sampling.replace(seed=4321))
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is neither used nor reseeded
    assert first.tokens == again.tokens
    assert first.tokens != other.tokens
    assert first.tokens != generate(model, prompts, GREEDY).tokens  # it did sample


def test_eos_stops_one_row_while_the_others_continue(make_decoder):
    model = make_decoder("llama-tiny")
    prompts = random_prompts()
    free = generate(model, prompts, GREEDY).tokens
    # an EOS that row 0 first produces mid-way and row 1 never produces
    eos = next(t for i, t in enumerate(free[0]) if i >= 3 and t not in free[0][:i] and t not in free[1])
    result = generate(model, prompts, GREEDY.replace(eos_token_ids=[eos]))
    for row, tokens in enumerate(free):
        stop = tokens.index(eos) if eos in tokens else None
        assert result.tokens[row] == tokens[:stop]  # the EOS itself is not part of the output
        assert result.finish_reasons[row] == ("length" if stop is None else "eos")
    assert result.finish_reasons[0] == "eos" and result.finish_reasons[1] == "length"

    ignored = generate(model, prompts, GREEDY.replace(eos_token_ids=[eos], ignore_eos=True))
    assert ignored.tokens == free and ignored.finish_reasons == ["length"] * 3


def test_eos_defaults_to_the_model_config(make_decoder):
    prompts = random_prompts()
    free = generate(make_decoder("llama-tiny"), prompts, GREEDY).tokens
    eos = free[0][5]
    model = make_decoder("llama-tiny", eos_token_id=eos)  # same weights, another config EOS
    result = generate(model, prompts, GREEDY.replace(eos_token_ids=None))
    assert result.finish_reasons[0] == "eos"
    assert result.tokens[0] == free[0][:free[0].index(eos)]


def test_generation_stops_early_when_every_row_is_done(make_decoder):
    model = make_decoder("llama-tiny")
    prompts = random_prompts()
    free = generate(model, prompts, GREEDY).tokens
    eos = free[0][2]
    calls = []
    forward = model.forward
    model.forward = lambda ids, *a, **k: calls.append((tuple(ids.shape), k.get("last_only"))) or forward(ids, *a, **k)
    result = generate(model, prompts, GREEDY.replace(eos_token_ids=[eos, free[1][1], free[2][0]]))
    assert result.finish_reasons == ["eos"] * 3
    assert len(calls) == 3  # prefill + 2 decode steps: row 0 ended on its third token


def test_one_prefill_forward_then_one_token_per_forward(make_decoder):
    model = make_decoder("llama-tiny")
    prompts = random_prompts()
    calls = []
    forward = model.forward
    model.forward = lambda ids, *a, **k: calls.append((tuple(ids.shape), k.get("last_only"))) or forward(ids, *a, **k)
    generate(model, prompts, GREEDY)
    assert calls[0] == ((3, max(PROMPT_LENS)), True)  # the whole padded prompt, LM head on the last position
    assert calls[1:] == [((3, 1), True)] * (GREEDY.max_new_tokens - 1)  # the last token is not fed back


def test_stop_string_cuts_text_and_tokens(make_decoder):
    model = make_decoder("llama-tiny")
    prompts = random_prompts()
    free = generate(model, prompts, GREEDY).tokens
    texts = [decode(t) for t in free]
    # a stop string spanning two tokens of row 0 ("3><17" of "<3><17>"), absent from the other rows
    stop = next(f"{a}><{b}" for a, b in zip(free[0][3:], free[0][4:])
                if f"{a}><{b}" not in texts[1] and f"{a}><{b}" not in texts[2])
    streamed = {0: [], 1: [], 2: []}
    result = generate(model, prompts, GREEDY.replace(stop=["never appears", stop]), decode=decode,
                      on_token=lambda row, token: streamed[row].append(token))
    cut = texts[0].find(stop)
    assert result.texts[0] == texts[0][:cut] and stop not in result.texts[0]
    # tokens: the whole tokens before the cut; the token the stop string starts inside is dropped
    kept = result.tokens[0]
    assert kept == free[0][:len(kept)] and len(decode(kept)) <= cut < len(decode(free[0][:len(kept) + 1]))
    assert decode(kept) != result.texts[0]  # every token starts with "<" and the stop with a digit
    assert result.finish_reasons == ["stop", "length", "length"]
    assert result.tokens[1:] == free[1:] and result.texts[1:] == texts[1:]
    assert streamed[0][: len(result.tokens[0])] == result.tokens[0]  # streaming ran ahead of the cut
    assert streamed[1] == free[1] and streamed[2] == free[2]


def test_streaming_sees_every_output_token_in_order_but_not_eos(make_decoder):
    model = make_decoder("llama-tiny")
    prompts = random_prompts()
    free = generate(model, prompts, GREEDY).tokens
    eos = free[1][4]
    calls = []
    result = generate(model, prompts, GREEDY.replace(eos_token_ids=[eos]), on_token=lambda r, t: calls.append((r, t)))
    assert [[t for r, t in calls if r == row] for row in range(3)] == result.tokens
    assert eos not in [t for r, t in calls if r == 1]
    rows_in_order = [r for r, _ in calls]
    assert rows_in_order[:3] == [0, 1, 2]  # step by step, every live row in turn


def test_repetition_penalty_avoids_seen_tokens(make_decoder):
    model = make_decoder("llama-tiny")
    prompts = random_prompts()
    plain = generate(model, prompts, GREEDY.replace(max_new_tokens=30)).tokens
    assert any(len(set(t)) < len(t) for t in plain)  # the random model does repeat itself
    penalised = generate(model, prompts, GREEDY.replace(max_new_tokens=30, repetition_penalty=1e4)).tokens
    for prompt, tokens in zip(prompts, penalised):
        assert len(set(tokens)) == len(tokens) and not set(tokens) & set(prompt)


def test_stats(make_decoder):
    model = make_decoder("mistral-tiny", sliding_window=None)
    prompts = random_prompts()
    result = generate(model, prompts, GREEDY, cache_kind="static")
    stats, cfg = result.stats, model.config
    assert stats.prompt_tokens == sum(PROMPT_LENS)
    assert stats.new_tokens == 3 * GREEDY.max_new_tokens == sum(len(t) for t in result.tokens)
    slots = max(PROMPT_LENS) + GREEDY.max_new_tokens
    assert stats.cache_bytes == 3 * slots * cfg.kv_cache_bytes_per_token(4)
    assert stats.prefill_s > 0 and stats.decode_s > 0
    assert stats.decode_tokens_per_s == pytest.approx(3 * (GREEDY.max_new_tokens - 1) / stats.decode_s)
    assert stats.prefill_tokens_per_s == pytest.approx(sum(PROMPT_LENS) / stats.prefill_s)
    assert set(stats.as_dict()) >= {"prefill_tokens_per_s", "decode_tokens_per_s", "cache_bytes"}
    assert result.texts is None


def test_invalid_requests_raise(make_decoder):
    model = make_decoder("gpt2-tiny")  # a context of 512 tokens
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GREEDY.replace(max_new_tokens=-1)
    with pytest.raises(ValueError, match="empty"):
        generate(model, [[1, 2], []], GREEDY)
    with pytest.raises(ValueError, match="at least one prompt"):
        generate(model, [], GREEDY)
    with pytest.raises(ValueError, match="outside"):
        generate(model, [[1, 5000]], GREEDY)
    with pytest.raises(ValueError, match="context of 512"):
        generate(model, [[1] * 500], GREEDY)
    generate(model, [[1] * 492], GREEDY)  # 492 + 20 = 512 fits exactly
    with pytest.raises(ValueError, match="decode"):
        generate(model, [[1, 2]], GREEDY.replace(stop=["x"]))
