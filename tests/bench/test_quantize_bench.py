"""bench.quantize runs end to end on a few short rows (its figures come from full runs)."""

import json

import pytest
import torch

from bench import quantize


@pytest.mark.slow  # ~15 s on a quiet 2-core machine (loads SmolLM2, scores three rows)
def test_quantize_bench_rows_and_the_q4_1_identity(capsys, tmp_path):
    threads = torch.get_num_threads()
    results = tmp_path / "rows.jsonl"
    args = ["--rows", "float,rtn-w4-g32,nf4-g64", "--eval-tokens", "96", "--window", "64", "--stride", "32",
            "--calib-tokens", "64", "--threads", str(threads), "--results", str(results)]
    try:
        quantize.main(args)
    finally:
        torch.set_num_threads(threads)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["row"]: r for r in report["results"]}
    assert set(rows) == {"float", "rtn-w4-g32", "nf4-g64"} and report["eval_tokens"] == 96
    # the float model is SmolLM2's Q4_1 GGUF dequantized: RTN asymmetric at group 32 gives it back
    assert rows["rtn-w4-g32"]["perplexity"] == rows["float"]["perplexity"]
    assert rows["nf4-g64"]["perplexity"] != rows["float"]["perplexity"]
    for row in rows.values():
        assert row["perplexity"] > 1 and row["bytes"] > 0 and row["model_bytes"] > row["bytes"]
    assert 0.13 < rows["rtn-w4-g32"]["bytes_ratio"] < 0.16  # 4 bits + two float16 per 32 = 1/6.4 of float32
    # a second run reads the finished rows back instead of recomputing them
    quantize.main(args[:-2] + ["--results", str(results)])
    assert len(results.read_text().splitlines()) == 3
    torch.set_num_threads(threads)
