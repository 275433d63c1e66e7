"""ServeConfig checks and byte sizes as the command line writes them."""

import pytest

from hybridlm.server.config import ServeConfig, parse_bytes


@pytest.mark.parametrize("text,value", [("512M", 512 * 2**20), ("2G", 2 * 2**30), ("1.5g", 3 * 2**29),
                                        ("65536", 65536), ("64KiB", 65536), (4096, 4096)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "12X", "-5M", "M", "0"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError):
        parse_bytes(text)
    assert parse_bytes("0", allow_zero=True) == 0


def test_serve_config_defaults_to_loopback_and_checks():
    assert ServeConfig().host == "127.0.0.1"
    for bad in (dict(port=70000), dict(api_key=" "), dict(max_logprobs=21), dict(shutdown_timeout_s=-1)):
        with pytest.raises(ValueError):
            ServeConfig(**bad)
