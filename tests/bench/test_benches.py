"""The benchmark scripts run end to end on small settings and print what they promise (their
figures come from full runs, not from here)."""

import json
import math

import torch

from bench import decode, gpt2_baseline, train_speedrun


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_gpt2_baseline_is_the_same_model_as_ours():
    result = gpt2_baseline.compare(steps=2, seq_len=32, batch=2)
    ours, baseline = result["rows"]
    assert ours["params"] == baseline["params"]  # the comparison is shape for shape
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0


def test_speedrun_trains_every_model_in_turns(tmp_path, capsys):
    data = tmp_path / "data"
    gpt2_baseline._random_dataset(str(data), 8192, 40_000)
    assert train_speedrun.main(["--minutes", "0.01", "--data", str(data), "--work", str(tmp_path),
                                "--eval-sequences", "2", "--seq-len", "32", "--batch", "2"]) == 0
    report = last_json(capsys.readouterr().out)
    rows = {r["model"]: r for r in report["results"]}
    assert set(rows) == {"gpt2", "llama", "hybrid"}
    for row in rows.values():
        assert row["steps"] >= 1 and math.isfinite(row["val_loss"])
        assert 0 < row["non_embedding_M"] < row["params_M"]


def test_decode_bench_reports_our_engine(capsys):
    threads = torch.get_num_threads()
    try:
        decode.main(["--engines", "hybridlm:q4_1", "--runs", "1", "--prompt-tokens", "16", "--new-tokens", "4",
                     "--threads", str(threads)])
    finally:
        torch.set_num_threads(threads)
    report = last_json(capsys.readouterr().out)
    (row,) = report["results"]
    assert row["engine"] == "hybridlm:q4_1" and report["memory_read_gb_s"] > 0 and report["cpu_model"]
    for key in ("load_s", "prefill_tok_s", "decode_tok_s", "weight_gb_s", "floor_tok_s", "of_floor"):
        assert row[key] > 0, key  # the README table's columns
    # the Q4_1 layers and Q8_0 head as stored: ~4.5-8.5 bits a weight, not float32's 540 MB
    assert 60 < row["weight_mb"] < 150
