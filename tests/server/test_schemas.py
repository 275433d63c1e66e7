"""Request validation: strict types and ranges, unknown fields and unsupported features refused by name."""

import pytest

from hybridlm.server.errors import APIError
from hybridlm.server.schemas import ChatCompletionRequest, CompletionRequest, parse_request

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _error(cls, body) -> APIError:
    with pytest.raises(APIError) as info:
        parse_request(cls, body)
    assert info.value.status == 400
    return info.value


def test_valid_requests_parse():
    req = parse_request(ChatCompletionRequest, {**CHAT, "temperature": 0, "stop": "x", "n": 2, "seed": 3,
                                                "logprobs": True, "top_logprobs": 2, "stream": True,
                                                "stream_options": {"include_usage": True}})
    assert req.temperature == 0.0 and req.stop_list() == ["x"] and req.stream_options.include_usage
    parts = parse_request(ChatCompletionRequest, {"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})
    assert parts.messages[0].text() == "ab"
    comp = parse_request(CompletionRequest, {"model": "m", "prompt": [1, 2, 3], "logprobs": 2})
    assert comp.prompts() == [[1, 2, 3]]
    assert parse_request(CompletionRequest, {"model": "m", "prompt": ["a", "b"]}).prompts() == ["a", "b"]


@pytest.mark.parametrize("field,value,param", [
    ("temperature", 2.5, "temperature"), ("temperature", "0.5", "temperature"), ("top_p", 0, "top_p"),
    ("n", 0, "n"), ("n", True, "n"), ("max_tokens", 0, "max_tokens"), ("presence_penalty", 3, "presence_penalty"),
    ("top_logprobs", 21, "top_logprobs"), ("seed", 1.5, "seed"), ("stop", 5, "stop"),
])
def test_types_and_ranges(field, value, param):
    err = _error(ChatCompletionRequest, {**CHAT, field: value, **({"logprobs": True} if field == "top_logprobs" else {})})
    assert err.param.split(".")[0] == param and err.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("body,param", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logit_bias": {"1": 5}}, "logit_bias"),
    ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages.0.name"),
])
def test_unsupported_chat_fields_are_named(body, param):
    err = _error(ChatCompletionRequest, {**CHAT, **body})
    assert err.param == param and err.code == "unsupported_parameter" and "not supported" in err.message


@pytest.mark.parametrize("body,param", [({"echo": True}, "echo"), ({"best_of": 3}, "best_of"),
                                        ({"suffix": "x"}, "suffix")])
def test_unsupported_completion_fields_are_named(body, param):
    err = _error(CompletionRequest, {"model": "m", "prompt": "x", **body})
    assert err.param == param and err.code == "unsupported_parameter"


def test_unknown_field_and_bad_shapes():
    assert "unrecognized request argument supplied: frobnicate" in _error(ChatCompletionRequest, {**CHAT, "frobnicate": 1}).message
    _error(ChatCompletionRequest, {**CHAT, "messages": []})
    _error(ChatCompletionRequest, {**CHAT, "messages": [{"role": "tool", "content": "x"}]})
    _error(ChatCompletionRequest, {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
    _error(ChatCompletionRequest, {**CHAT, "top_logprobs": 2})  # needs logprobs
    _error(ChatCompletionRequest, {**CHAT, "stream_options": {"include_usage": True}})  # needs stream
    _error(ChatCompletionRequest, {**CHAT, "max_tokens": 3, "max_completion_tokens": 4})
    _error(ChatCompletionRequest, {"messages": CHAT["messages"]})  # no model
    _error(ChatCompletionRequest, ["not", "an", "object"])
    _error(CompletionRequest, {"model": "m", "prompt": []})
    _error(CompletionRequest, {"model": "m", "prompt": "x", "stop": [""]})
    _error(CompletionRequest, {"model": "m", "prompt": "x", "stop": ["s"] * 17})
