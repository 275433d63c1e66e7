"""bench/speculative.py runs end to end on small settings (its figures come from full runs)."""

import json

import pytest

from bench import speculative


@pytest.mark.slow  # SmolLM2 decodes a prompt six ways: ~1 minute on 2 cores
def test_speculative_bench_reports_every_row_with_the_plain_tokens(capsys):
    speculative.main(["--new-tokens", "16", "--docs", "pass", "--k", "3", "--draft-blocks", "4", "--quant-act", "exact"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["config"]: r for r in report["rows"]}
    assert set(rows) == {"plain", "prompt-lookup", "prompt-lookup batched-attn", "layer-skip:4", "engine",
                         "engine+prompt-lookup"}
    assert all(r["same_tokens"] == 1 for r in rows.values())  # greedy speculation changed no token
    assert 0 <= rows["prompt-lookup"]["acceptance"] <= 1 and rows["plain"]["speedup"] == 1.0
    assert rows["engine"]["speedup"] == 1.0 and 0 <= rows["engine+prompt-lookup"]["acceptance"] <= 1
