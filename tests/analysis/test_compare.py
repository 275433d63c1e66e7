"""The comparison runner's API: context parsing, a tiny run, the report's ratios."""

import pytest
import torch

from hybridlm.analysis.compare import CompareConfig, markdown_table, parse_contexts, run_compare
from hybridlm.analysis.memory import cache_bytes
from hybridlm.presets import get_preset


def test_parse_contexts():
    assert parse_contexts("1k,4k, 16k,32k") == (1024, 4096, 16384, 32768)
    assert parse_contexts("300,100,100") == (100, 300)
    for bad in ("", "1k,abc", "0", "-4k"):
        with pytest.raises(ValueError):
            parse_contexts(bad)


def test_a_tiny_run_measures_what_the_analysis_predicts_and_restores_threads():
    threads = torch.get_num_threads()
    cc = CompareConfig(models=("gpt2-tiny", "nemotron-h-tiny"), contexts=(40,), decode_tokens=2,
                       prefill_chunk=16, threads=1)
    result = run_compare(cc, progress=False)
    assert torch.get_num_threads() == threads
    for name in cc.models:
        point = result.point(name, 40)
        assert point.cache_bytes == cache_bytes(get_preset(name), 43) == point.cache_bytes_predicted
        assert point.decode_ms >= point.decode_ms_min > 0
    table = markdown_table(result)
    ratio = result.point("gpt2-tiny", 40).cache_bytes / result.point("nemotron-h-tiny", 40).cache_bytes
    assert f"| 40 | {ratio:.1f}x |" in table


def test_learned_positions_cannot_run_past_their_table():
    cc = CompareConfig(models=("gpt2-tiny",), contexts=(600,))  # gpt2-tiny learned 512 positions
    with pytest.raises(ValueError, match="learned positions"):
        run_compare(cc, progress=False)
