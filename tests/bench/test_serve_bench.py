"""bench/serve.py end to end at a tiny scale: real servers (continuous and static batching) on
127.0.0.1, the streaming client, the table and the JSON; and the soak's bookkeeping."""

import json

import pytest

from bench import serve


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_serve_bench_smoke(capsys):
    """One server (SmolLM2, continuous batching), both workloads, two concurrency levels."""
    serve.main(["--engines", "continuous", "--concurrency", "1,2", "--prompt-tokens", "32", "--output-tokens", "3",
                "--min-requests", "2", "--requests-per-stream", "1", "--max-num-seqs", "4", "--kv-memory", "32M"])
    report = last_json(capsys.readouterr().out)
    rows = {(r["engine"], r["workload"], r["concurrency"]): r for r in report["results"]}
    assert set(rows) == {("continuous", w, c) for w in ("random", "shared-prefix") for c in (1, 2)}
    for row in rows.values():
        assert row["completed"] == 2 and row["failed"] == 0, row
        assert row["out_tok_s"] > 0 and 0 < row["ttft_mean_ms"] <= row["e2e_mean_ms"]
    assert rows[("continuous", "shared-prefix", 2)]["cached_share"] > 0.3  # the prefix was computed before
    assert rows[("continuous", "random", 2)]["cached_share"] < 0.2


@pytest.mark.slow
def test_serve_bench_runs_both_schedulers(capsys):
    serve.main(["--engines", "continuous,static", "--concurrency", "1,3", "--workloads", "random,shared-prefix",
                "--prompt-tokens", "32", "--output-tokens", "3", "--min-requests", "3", "--requests-per-stream", "1",
                "--max-num-seqs", "4", "--kv-memory", "32M"])
    report = last_json(capsys.readouterr().out)
    rows = {(r["engine"], r["workload"], r["concurrency"]): r for r in report["results"]}
    assert len(rows) == 8
    for row in rows.values():
        assert row["completed"] == 3 and row["failed"] == 0, row
        assert row["out_tok_s"] > 0 and row["ttft_mean_ms"] > 0 and row["e2e_mean_ms"] >= row["ttft_mean_ms"]
        assert 2 <= row["output_tokens"] / 3 <= 5  # lengths drawn around --output-tokens, generated exactly
    # the second level's shared-prefix requests find the prefix in the cache; random prompts do not
    assert rows[("continuous", "shared-prefix", 3)]["cached_share"] > 0.3  # 16 of 24 shared tokens: whole blocks
    assert rows[("continuous", "random", 3)]["cached_share"] < 0.2
    assert "random/c3/vs_static" in report["ratios"] and report["cpu_model"] is not None


@pytest.mark.slow
def test_soak_ends_every_request_and_frees_every_block(capsys):
    serve.main(["--soak", "4", "--soak-streams", "6", "--disconnect-prob", "0.5", "--prompt-tokens", "24",
                "--output-tokens", "6", "--max-num-seqs", "4", "--kv-memory", "32M"])
    soak = last_json(capsys.readouterr().out)["soak"]
    assert soak["ended"] and soak["failed"] == 0 and soak["sent"] >= 6
    assert soak["running_after"] == 0 and soak["waiting_after"] == 0 and soak["kv_blocks_used_after"] == 0
    assert soak["rss_end_mib"] > 0
