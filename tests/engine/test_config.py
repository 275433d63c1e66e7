import pytest

from hybridlm.engine import ConfigError, EngineConfig, RequestParams


@pytest.mark.parametrize("changes, message", [
    (dict(block_size=0), "block_size"), (dict(kv_memory=-1), "kv_memory"), (dict(max_num_seqs=0), "max_num_seqs"),
    (dict(scheduling="fifo"), "scheduling"), (dict(attention="flash"), "attention"),
    (dict(max_num_seqs=64, max_num_batched_tokens=32), "at least max_num_seqs"), (dict(max_queue=-1), "max_queue"),
    (dict(long_prefill=True), "long_prefill"),
])
def test_engine_config_rejects_bad_values(changes, message):
    with pytest.raises(ConfigError, match=message):
        EngineConfig(**changes)


@pytest.mark.parametrize("changes, message", [
    (dict(max_tokens=0), "max_new_tokens"), (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"),
    (dict(presence_penalty=3), "presence_penalty"), (dict(frequency_penalty=float("nan")), "frequency_penalty"),
    (dict(top_logprobs=3), "needs logprobs"), (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
    (dict(stop_token_ids=(-1,)), "stop_token_ids"), (dict(stop=("",)), "stop"),
])
def test_request_params_reject_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        RequestParams(**changes)


def test_request_params_accept_lists_and_map_to_sampling():
    p = RequestParams(stop=["a"], stop_token_ids=[5], temperature=0.5, top_k=3, seed=7, max_tokens=9)
    assert p.stop == ("a",) and p.stop_token_ids == (5,)
    s = p.sampling()
    assert (s.max_new_tokens, s.temperature, s.top_k, s.seed, s.stop) == (9, 0.5, 3, 7, ("a",))
