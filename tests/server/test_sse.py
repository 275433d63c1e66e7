"""SSE framing round-trips, and a stream cut before [DONE] is an error."""

import pytest

from hybridlm.server import sse


def test_events_round_trip_with_newlines_and_unicode():
    payloads = [{"text": "line one\nline two"}, {"text": "é\u2028🙂", "n": 1}]
    wire = b"".join(sse.event(p) for p in payloads) + sse.DONE
    lines = wire.decode().split("\n")
    assert all(not line or line.startswith("data: ") for line in lines)  # one data line per event
    assert list(sse.parse_events(iter(lines))) == payloads


def test_stream_without_done_is_an_error():
    with pytest.raises(ValueError):
        list(sse.parse_events(iter(sse.event({"a": 1}).decode().split("\n"))))
