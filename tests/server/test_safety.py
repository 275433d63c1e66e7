"""What keeps a server healthy: API keys, a bounded queue (429), clients that leave (their sequences
are cancelled and their blocks freed), SIGTERM, and /metrics that parse."""

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hybridlm.server.config import ServeConfig

from .conftest import tiny_model

LONG = {"model": "tiny", "prompt": "hello", "max_tokens": 4000, "ignore_eos": True}  # ~seconds of decoding


@pytest.fixture(scope="module")
def long_server(make_server, tiny_tokenizer):
    """One sequence at a time, one waiting at most, a 4096-token context: requests that run for seconds."""
    model = tiny_model("llama-tiny", tiny_tokenizer.vocab_size, max_seq_len=4096)
    return make_server(model, tiny_tokenizer, kv_memory=32 << 20, max_num_seqs=1, max_num_batched_tokens=64,
                       max_queue=1)


def engine_stats(server) -> dict:
    return httpx.get(server.url + "/stats").json()["engine"]


def wait_idle(server, timeout=20.0) -> dict:
    """Poll /stats until nothing runs, waits or holds a block."""
    deadline = time.monotonic() + timeout
    while True:
        st = engine_stats(server)
        if st["num_running"] == 0 and st["num_waiting"] == 0 and st["kv_blocks_used"] == 0:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"the engine is not idle: {st}")
        time.sleep(0.05)


def metric(server, name: str, **labels) -> float:
    for family in text_string_to_metric_families(httpx.get(server.url + "/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_api_key_guards_v1_only(make_server, tiny_tokenizer):
    server = make_server(tiny_model("llama-tiny", tiny_tokenizer.vocab_size), tiny_tokenizer,
                         ServeConfig(model_name="tiny", api_key="sekrit"))
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.completions.create(model="tiny", prompt="x", max_tokens=2)
    assert info.value.body["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/v1/models").status_code == 401  # no header at all
    assert httpx.post(server.url + "/v1/chat/completions", json={}).status_code == 401  # before validation
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": "Basic sekrit"}).status_code == 401
    good = openai.OpenAI(base_url=server.url + "/v1", api_key="sekrit", max_retries=0)
    assert good.completions.create(model="tiny", prompt="x", max_tokens=2).usage.completion_tokens >= 1
    assert httpx.get(server.url + "/health").status_code == 200  # probes and scrapes need no key
    assert httpx.get(server.url + "/metrics").status_code == 200


def test_full_queue_answers_429_and_disconnects_free_blocks(long_server):
    url = long_server.url + "/v1/completions"
    aborted_before = engine_stats(long_server)["requests_aborted"]
    with httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b:
        with a.stream("POST", url, json={**LONG, "stream": True}) as running:
            lines = running.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))  # it is decoding
            with b.stream("POST", url, json={**LONG, "stream": True}) as queued:
                assert queued.status_code == 200  # admitted: it waits for the one slot
                full = httpx.post(url, json=LONG, timeout=30)
                assert full.status_code == 429
                assert full.json()["error"]["type"] == "rate_limit_error"
                # /stats re-reads the engine at most every stats_interval_s (0.25 s) while it runs
                deadline = time.monotonic() + 5
                while engine_stats(long_server)["kv_blocks_used"] == 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert engine_stats(long_server)["kv_blocks_used"] > 0
            # leaving the with-blocks closes both connections mid-stream
    st = wait_idle(long_server)
    assert st["requests_aborted"] - aborted_before == 2  # cancelled, not run to the end
    assert metric(long_server, "hybridlm_requests_rejected_total", status="429") >= 1
    assert metric(long_server, "hybridlm_requests_total", finish_reason="abort") >= 2


def test_non_streaming_client_that_leaves_is_cancelled(long_server):
    aborted_before = engine_stats(long_server)["requests_aborted"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(long_server.url + "/v1/completions", json=LONG, timeout=httpx.Timeout(30, read=1.0))
    st = wait_idle(long_server)
    assert st["requests_aborted"] - aborted_before == 1


def test_metrics_count_requests_and_latency(long_server):
    before = metric(long_server, "hybridlm_time_to_first_token_seconds_count")
    tokens_before = metric(long_server, "hybridlm_generation_tokens_total")
    for _ in range(2):
        r = httpx.post(long_server.url + "/v1/completions", json={**LONG, "max_tokens": 5}, timeout=30)
        assert r.status_code == 200
    text = httpx.get(long_server.url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}  # the whole page parses
    assert metric(long_server, "hybridlm_time_to_first_token_seconds_count") == before + 2
    assert metric(long_server, "hybridlm_generation_tokens_total") == tokens_before + 10
    tpot = families["hybridlm_time_per_output_token_seconds"]
    assert any(s.name.endswith("_count") and s.value >= 2 for s in tpot.samples)
    assert metric(long_server, "hybridlm_kv_blocks_total") > 0


def _start_subprocess(*args):
    script = Path(__file__).with_name("serve_tiny.py")
    proc = subprocess.Popen([sys.executable, str(script), *args], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if m := re.search(r"listening on (http://\S+)", line):
            return proc, m.group(1)
    raise AssertionError(f"the server did not start (exit {proc.wait()})")


def _stream_lines(url, body, started, out):
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                out.append(line)
                started.set()


def test_sigterm_finishes_short_requests_cancels_long_ones_and_exits_zero():
    proc, url = _start_subprocess("--shutdown-timeout", "6")
    try:
        short, long_, threads = [], [], []
        for body, out in ((LONG, long_), ({**LONG, "max_tokens": 40}, short)):  # SIGTERM as the short one starts
            started = threading.Event()
            threads.append(threading.Thread(target=_stream_lines, args=(url, body, started, out)))
            threads[-1].start()
            assert started.wait(30)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert short[-1] == "data: [DONE]" and '"finish_reason":"length"' in short[-2]  # finished in the grace time
        assert "the server is shutting down" in long_[-1]  # cancelled after it, with an error event
        assert proc.wait(30) == 0
        err = proc.stderr.read()
        assert "hybridlm serve: shutting down (" in err and "hybridlm serve: stopped" in err
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_an_engine_failure_is_a_500_and_the_server_goes_on(make_server, tiny_tokenizer):
    import torch

    model = tiny_model("llama-tiny", tiny_tokenizer.vocab_size)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))  # logits nothing can be sampled from
    server = make_server(model, tiny_tokenizer)
    body = {"model": "tiny", "prompt": "x", "max_tokens": 3}
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=30) as s:
        events = [line for line in s.iter_lines() if line.startswith("data:")]
    assert '"engine_error"' in events[-1]
    assert httpx.get(server.url + "/health").status_code == 200
    wait_idle(server)
