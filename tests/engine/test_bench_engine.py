"""bench/engine.py runs end to end on small settings and prints what it promises (its figures
come from full runs, not from here)."""

import json

import torch

from bench import engine as bench_engine


def test_engine_bench_reports_every_mode_and_checks_tokens(capsys):
    threads = torch.get_num_threads()
    try:
        bench_engine.main(["--requests", "3", "--concurrency", "3", "--prompt-tokens", "16", "--new-tokens", "3",
                           "--sequential", "2", "--static", "--threads", "1", "--kv-memory", str(64 << 20)])
    finally:
        torch.set_num_threads(threads)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["mode"]: r for r in report["rows"]}
    assert set(rows) == {"sequential", "continuous", "static"}
    assert all(r["out_tok_s"] > 0 for r in rows.values())
    assert rows["continuous"]["same_tokens"] == 2 and rows["static"]["same_tokens"] == 2
    assert report["engine_metrics"]["kv_blocks_used"] == 0
