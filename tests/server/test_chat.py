"""Chat prompts: turn boundaries passed to the engine as snapshot points, and what they buy a hybrid
model: a later turn prefills only its new tokens, with the same output as without any cache."""

import httpx
import pytest

from hybridlm.server.chat import chat_prompt

from .conftest import tiny_model

SYSTEM = {"role": "system", "content": "You answer questions about the Python language in one sentence."}


def test_boundaries_are_true_prefixes_at_every_turn(tiny_tokenizer):
    tok = tiny_tokenizer
    messages = [SYSTEM, {"role": "user", "content": "What is a dict?"},
                {"role": "assistant", "content": "A mapping."}, {"role": "user", "content": "And a set?"}]
    ids, points = chat_prompt(tok, messages)
    assert points == sorted(points) and points[-1] == len(ids)
    for k in range(1, len(messages) + 1):  # after the system prompt and after every message
        prefix = tok.encode(tok.apply_chat_template(messages[:k], add_generation_prompt=False))
        assert len(prefix) in points and ids[:len(prefix)] == prefix
    # where turn 1's request ended its prompt: turn 2 resumes from the state kept there
    turn1 = tok.encode(tok.apply_chat_template(messages[:2], add_generation_prompt=True))
    assert len(turn1) in points


@pytest.fixture(scope="module")
def hybrid_servers(make_server, tiny_tokenizer):
    """The same random Nemotron-H-style hybrid, with and without prefix caching."""
    model = tiny_model("nemotron-h-tiny", tiny_tokenizer.vocab_size, max_seq_len=512)
    cached = make_server(model, tiny_tokenizer, kv_memory=8 << 20, mamba_state_memory=8 << 20, block_size=16)
    plain = make_server(model, tiny_tokenizer, kv_memory=8 << 20, enable_prefix_caching=False)
    return cached, plain


def _chat(server, messages, max_tokens=6):
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["choices"][0]["message"]["content"], body["usage"]


def _stats(server):
    return httpx.get(server.url + "/stats").json()["engine"]


def test_hybrid_multi_turn_chat_prefills_only_the_new_turn(hybrid_servers, tiny_tokenizer):
    cached, plain = hybrid_servers
    hits_before = _stats(cached)["mamba_snapshot_hits"]
    turn1 = [SYSTEM, {"role": "user", "content": "What does the with statement do?"}]
    reply, usage1 = _chat(cached, turn1)
    assert (reply, usage1["prompt_tokens"]) == (_chat(plain, turn1)[0], usage1["prompt_tokens"])
    turn2 = turn1 + [{"role": "assistant", "content": reply}, {"role": "user", "content": "Show me an example."}]
    reply2, usage2 = _chat(cached, turn2)
    cached_tokens = usage2["prompt_tokens_details"]["cached_tokens"]
    # at least turn 1's whole prompt comes from the cache (the state snapshot kept at its end)
    assert cached_tokens >= usage1["prompt_tokens"]
    assert _stats(cached)["mamba_snapshot_hits"] > hits_before
    reference, ref_usage = _chat(plain, turn2)
    assert ref_usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert reply2 == reference  # resuming from the snapshot changes nothing


def test_hybrid_shared_system_prompt_is_computed_once(hybrid_servers, tiny_tokenizer):
    cached, plain = hybrid_servers
    system_end = len(tiny_tokenizer.encode(tiny_tokenizer.apply_chat_template([SYSTEM], add_generation_prompt=False)))
    _chat(cached, [SYSTEM, {"role": "user", "content": "What is a generator?"}])
    second = [SYSTEM, {"role": "user", "content": "How are exceptions raised?"}]
    reply, usage = _chat(cached, second)
    assert usage["prompt_tokens_details"]["cached_tokens"] >= system_end
    assert reply == _chat(plain, second)[0]
