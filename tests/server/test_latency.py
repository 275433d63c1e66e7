"""The latency definitions shared by /metrics and bench/serve.py."""

import pytest

from hybridlm.server.latency import request_latency


def test_definitions_on_a_known_timeline():
    lat = request_latency(10.0, [10.5, 10.7, 11.0, 11.5], output_tokens=4)
    assert lat.ttft == pytest.approx(0.5)
    assert lat.itl == pytest.approx([0.2, 0.3, 0.5])
    assert lat.e2e == pytest.approx(1.5)
    assert lat.tpot == pytest.approx((1.5 - 0.5) / 3)


def test_single_token_and_no_token():
    one = request_latency(0.0, [0.25], output_tokens=1)
    assert one.ttft == 0.25 and one.tpot is None and one.itl == [] and one.e2e == 0.25
    none = request_latency(0.0, [], output_tokens=0, end=2.0)
    assert none.ttft is None and none.e2e == 2.0
