"""The Prometheus registry: values, histogram buckets and a text format prometheus_client parses."""

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hybridlm.server.metrics import Counter, Gauge, Histogram, Registry
from hybridlm.server.telemetry import ServerMetrics


def _families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_text_format_parses_with_labels_and_escapes():
    reg = Registry()
    c = reg.add(Counter("x_requests_total", 'requests "served"\nby reason \\ path', ["reason"]))
    g = reg.add(Gauge("x_running", "running now"))
    c.inc(reason='stop "quoted"')
    c.inc(2, reason="length")
    g.set(3)
    fam = _families(reg.render())
    samples = {s.labels["reason"]: s.value for s in fam["x_requests"].samples}
    assert samples == {'stop "quoted"': 1.0, "length": 2.0}
    assert fam["x_requests"].documentation == 'requests "served"\nby reason \\ path'
    assert fam["x_running"].samples[0].value == 3.0


def test_histogram_buckets_are_cumulative():
    reg = Registry()
    h = reg.add(Histogram("x_seconds", "latency", [0.1, 1.0]))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    samples = {(s.name, s.labels.get("le")): s.value for s in _families(reg.render())["x_seconds"].samples}
    assert samples[("x_seconds_bucket", "0.1")] == 2  # le is inclusive
    assert samples[("x_seconds_bucket", "1.0")] == 3
    assert samples[("x_seconds_bucket", "+Inf")] == 4
    assert samples[("x_seconds_count", None)] == 4
    assert math.isclose(samples[("x_seconds_sum", None)], 3.65)


def test_counter_rejects_decrease_and_wrong_labels():
    c = Counter("x_total", "x", ["a"])
    with pytest.raises(ValueError):
        c.inc(-1, a="1")
    with pytest.raises(ValueError):
        c.inc(1, b="1")
    reg = Registry()
    reg.add(c)
    with pytest.raises(ValueError):
        reg.add(c)


def test_server_metrics_document_latency_definitions_and_parse():
    m = ServerMetrics()
    text = m.render({"num_running": 2, "kv_blocks_used": 5, "kv_blocks_total": 64,
                     "mamba_snapshot_misses": {"no_snapshot": 3}})
    fam = _families(text)
    assert "TTFT = first chunk - arrival" in fam["hybridlm_time_to_first_token_seconds"].documentation
    assert "TPOT = (E2E - TTFT) / (output tokens - 1)" in fam["hybridlm_time_per_output_token_seconds"].documentation
    assert fam["hybridlm_kv_blocks_used"].samples[0].value == 5
    miss = fam["hybridlm_mamba_snapshot_misses"].samples[0]
    assert miss.labels == {"reason": "no_snapshot"} and miss.value == 3
