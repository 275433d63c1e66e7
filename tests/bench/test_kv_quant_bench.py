"""bench.kv_quant and bench.w8a8 run end to end on short settings (their figures come from full runs)."""

import json

import pytest
import torch

from bench import kv_quant, w8a8


def _report(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_kv_quant_bench_compares_the_two_caches(capsys):
    threads = torch.get_num_threads()
    try:
        kv_quant.main(["--tokens", "40", "--decode", "4", "--threads", str(threads)])
    finally:
        torch.set_num_threads(threads)
    (row,) = _report(capsys)["results"]
    assert row["tokens"] == 40
    # SmolLM2: head_dim 64, so int8 codes + a float32 scale are (64 + 4) / (64 x 4) of float32
    assert row["bytes_ratio"] == pytest.approx(68 / 256)
    assert 0 < row["mean_diff"] < row["max_diff"] and row["top1_agree"] > 0.8
    assert abs(row["ppl_delta"]) < 0.05 and row["decode_ms_float"] > 0 and row["decode_ms_int8"] > 0


@pytest.mark.slow  # loads SmolLM2 and quantizes it twice, block by block
def test_w8a8_bench_rows(capsys):
    threads = torch.get_num_threads()
    try:
        w8a8.main(["--rows", "float,naive-dynamic,smoothquant-static", "--eval-tokens", "96", "--window", "64",
                   "--stride", "32", "--calib-tokens", "64", "--threads", str(threads)])
    finally:
        torch.set_num_threads(threads)
    rows = {r["row"]: r for r in _report(capsys)["results"]}
    assert set(rows) == {"float", "naive-dynamic", "smoothquant-static"}
    for name in ("naive-dynamic", "smoothquant-static"):
        # a real change of the model, and the int8 path agreeing with its float twin
        assert rows[name]["perplexity"] != rows["float"]["perplexity"] and rows[name]["int_vs_ref"] < 1e-3
        assert 0.2 < rows[name]["bytes_ratio"] < 0.3  # int8 weights + a float16 scale per row
