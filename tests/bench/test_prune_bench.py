"""bench/prune.py runs end to end on small settings and reports what its table promises (its
figures come from full runs, not from here)."""

import json

import pytest
import torch

from bench import prune


@pytest.mark.slow
def test_prune_bench_reports_parameters_perplexity_and_speed(capsys):
    threads = torch.get_num_threads()
    try:
        prune.main(["--variants", "original,layers2", "--ppl-tokens", "64", "--window", "64", "--prompt-tokens", "8",
                    "--new-tokens", "3", "--runs", "1", "--calib-tokens", "512", "--threads", str(threads)])
    finally:
        torch.set_num_threads(threads)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    original, pruned = report["results"]
    assert original["variant"] == "original" and original["speedup"] == 1.0
    assert pruned["params_M"] < original["params_M"] and "layers 30->28" in pruned["shape"]
    for row in (original, pruned):
        assert row["ppl"] > 1 and row["decode_tok_s"] > 0
