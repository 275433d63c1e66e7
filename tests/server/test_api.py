"""The OpenAI API, driven by the official `openai` client against a real uvicorn server over the
real engine (a tiny random model): plain and streaming, completions and chat, usage with cached
tokens, n > 1, seeds, logprobs, stop strings and errors."""

import httpx
import openai
import pytest

from hybridlm.server.chat import chat_prompt

EXACT = {"ignore_eos": True}  # the random model may sample its EOS at any point; tests want exact lengths


def test_models_lists_the_served_model(client, tiny_server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    r = httpx.get(tiny_server.url + "/v1/models")
    assert r.json()["data"][0]["max_model_len"] == 256


def test_completion_plain_and_streamed_agree(client):
    kwargs = dict(model="tiny", prompt="The tuple type", max_tokens=12, temperature=0, extra_body=EXACT)
    plain = client.completions.create(**kwargs)
    (choice,) = plain.choices
    assert choice.finish_reason == "length" and plain.usage.completion_tokens == 12
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + 12
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12  # the usage-only chunk
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_plain_and_streamed_agree(client, tiny_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a list?"}]
    kwargs = dict(model="tiny", messages=messages, max_tokens=10, temperature=0, extra_body=EXACT)
    plain = client.chat.completions.create(**kwargs)
    msg = plain.choices[0].message
    assert msg.role == "assistant" and plain.object == "chat.completion"
    ids, _ = chat_prompt(tiny_tokenizer, messages)
    assert plain.usage.prompt_tokens == len(ids)  # the chat template was applied
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == msg.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_repeated_prompt_reports_cached_tokens(client, pydoc_text):
    prompt = pydoc_text[:300]
    first = client.completions.create(model="tiny", prompt=prompt, max_tokens=2, temperature=0)
    second = client.completions.create(model="tiny", prompt=prompt, max_tokens=2, temperature=0)
    n = first.usage.prompt_tokens
    assert n > 64
    assert second.usage.prompt_tokens_details.cached_tokens >= (n - 1) // 16 * 16 - 16  # all full blocks, or nearly
    assert second.usage.prompt_tokens_details.cached_tokens > first.usage.prompt_tokens_details.cached_tokens
    assert second.choices[0].text == first.choices[0].text  # a cached prefix changes nothing


def test_n_choices_and_seed_reproducibility(client):
    kwargs = dict(model="tiny", prompt="Sampling", max_tokens=8, temperature=1.0, n=3, seed=1234, extra_body=EXACT)
    a = client.completions.create(**kwargs)
    b = client.completions.create(**kwargs)
    assert sorted(c.index for c in a.choices) == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # same seed, same texts
    assert len({c.text for c in a.choices}) > 1  # each choice its own stream of randomness
    assert a.usage.completion_tokens == 24
    other = client.completions.create(**{**kwargs, "seed": 99})
    assert [c.text for c in other.choices] != [c.text for c in a.choices]
    streamed = list(client.completions.create(**kwargs, stream=True))
    by_index = {}
    for chunk in streamed:
        for c in chunk.choices:
            by_index[c.index] = by_index.get(c.index, "") + c.text
    assert [by_index[i] for i in range(3)] == [c.text for c in a.choices]


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                       temperature=0, logprobs=True, top_logprobs=3, extra_body=EXACT)
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0], abs=1e-5)  # greedy takes the most likely token
        assert entry.top_logprobs[0].token == entry.token and bytes(entry.bytes).decode("utf-8", "replace") == entry.token


def test_completion_logprobs_format(client):
    r = client.completions.create(model="tiny", prompt="abc", max_tokens=5, temperature=0, logprobs=2,
                                  extra_body=EXACT)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert all(len(t) <= 2 for t in lp.top_logprobs) and all(x <= 0 for x in lp.token_logprobs)
    assert lp.text_offset == sorted(lp.text_offset)


def test_stop_string_cuts_the_text(client):
    base = client.completions.create(model="tiny", prompt="Classes", max_tokens=24, temperature=0, extra_body=EXACT)
    text = base.choices[0].text
    stop = next(text[i:i + 2] for i in range(4, len(text) - 2) if text.index(text[i:i + 2]) == i
                and text[i:i + 2].strip() and "\ufffd" not in text[i:i + 2])
    cut = client.completions.create(model="tiny", prompt="Classes", max_tokens=24, temperature=0, stop=[stop, "zzzz"],
                                    extra_body=EXACT)
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[:text.index(stop)]


@pytest.mark.parametrize("kwargs,param", [
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), "tools"),
    (dict(response_format={"type": "json_object"}), "response_format"),
    (dict(logit_bias={"5": 10}), "logit_bias"),
    (dict(temperature=3), "temperature"),
    (dict(extra_body={"best_of": 2}), None),  # not a chat field at all
])
def test_bad_chat_requests_are_400_with_openai_error_json(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=2, **kwargs)
    err = info.value.body
    assert set(err) >= {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    if param:
        assert err["param"] == param


def test_unknown_model_and_too_long_prompts(client, tiny_server):
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt=list(range(5, 300)), max_tokens=2)  # context is 256
    assert info.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="x", max_tokens=1000)
    assert info.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt=[10**6], max_tokens=2)  # not a token id
    r = httpx.post(tiny_server.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.get(tiny_server.url + "/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


def test_health_and_playground_page(tiny_server):
    assert httpx.get(tiny_server.url + "/health").json() == {"status": "ok"}
    page = httpx.get(tiny_server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "/v1/chat/completions" in html and 'id="prompt"' in html and "/stats" in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere (no CDN)
