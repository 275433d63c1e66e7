"""`hybridlm analyze` and `hybridlm compare` as users script them."""

import json

import pytest
import torch

from hybridlm.analysis.memory import cache_bytes
from hybridlm.cli import build_parser
from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset

KEYS = ("params_total", "params_active", "weight_bytes", "flops_per_token_prefill", "flops_per_token_decode",
        "cache_bytes_per_token", "cache_bytes_at_context")


def test_analyze_json_nemotron_h_8b(cli):
    code, out, _ = cli("analyze", "nemotron-h-8b", "--json")
    assert code == 0
    result = json.loads(out)
    for key in KEYS:
        assert key in result
    assert result["params_total"] / 1e9 == pytest.approx(8.1, abs=0.05)
    assert result["weight_bytes"] == 2 * result["params_total"]  # bfloat16 by default
    assert result["context"] == 8192


def test_analyze_mixtral_reports_active_parameters(cli):
    code, out, _ = cli("analyze", "mixtral-8x7b", "--context", "4096", "--json")
    result = json.loads(out)
    assert code == 0 and round(result["params_active"] / 1e9, 1) == 12.9 < result["params_total"] / 1e9


def test_analyze_cache_bytes_equal_a_real_prefilled_cache(cli):
    code, out, _ = cli("analyze", "nemotron-h-tiny", "--context", "70", "--batch", "2",
                       "--dtype", "float32", "--json")
    assert code == 0
    cfg = get_preset("nemotron-h-tiny")
    model = Decoder(cfg).eval()
    cache = model.new_cache(2, kind="static", max_len=70)
    with torch.no_grad():
        model(torch.randint(0, cfg.vocab_size, (2, 70)), cache)
    assert json.loads(out)["cache_bytes_at_context"] == cache.nbytes()


def test_analyze_prints_a_readable_report(cli):
    code, out, _ = cli("analyze", "compare-hybrid", "--context", "16384")
    assert code == 0
    assert "parameters" in out and "Mamba state" in out and "16,384" in out


def test_analyze_unknown_model_is_a_one_line_error(cli):
    code, out, err = cli("analyze", "no-such-model")
    assert code != 0 and out == "" and err.count("\n") == 1 and err.startswith("hybridlm: error:")


def test_help_explains_both_commands():
    parser = build_parser()
    text = parser.format_help()
    assert "analyze" in text and "compare" in text
    for command in ("analyze", "compare"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])


def test_compare_writes_table_plots_and_predicted_cache_bytes(cli, tmp_path):
    out_dir = tmp_path / "cmp"
    code, out, err = cli("compare", "llama-tiny", "nemotron-h-tiny", "--contexts", "48,96",
                         "--decode-tokens", "2", "--prefill-chunk", "40", "--threads", "1",
                         "--out", str(out_dir), "--no-progress")
    assert code == 0
    for name in ("compare.md", "compare.json", "decode_latency.png", "cache_memory.png", "prefill_time.png"):
        assert (out_dir / name).stat().st_size > 0
    assert (out_dir / "decode_latency.png").read_bytes()[:4] == b"\x89PNG"
    assert out.strip() == (out_dir / "compare.md").read_text().strip()
    result = json.loads((out_dir / "compare.json").read_text())
    points = result["points"]
    assert {(p["model"], p["context"]) for p in points} == {(m, n) for m in ("llama-tiny", "nemotron-h-tiny")
                                                           for n in (48, 96)}
    for p in points:
        # measured from the cache tensors == predicted by the analysis model, at context + 1 + 2 tokens
        assert p["cache_bytes"] == p["cache_bytes_predicted"] == cache_bytes(get_preset(p["model"]), p["context"] + 3)
        assert p["prefill_s"] > 0 and p["decode_ms"] > 0 and p["decode_ms_floor"] > 0
    # the table's measured and predicted MiB columns agree row by row
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| llama") or
            line.startswith("| nemotron")]
    assert len(rows) == 4 and all(r[7].strip() == r[8].strip() for r in rows)


def test_compare_rejects_bad_contexts(cli):
    code, out, err = cli("compare", "llama-tiny", "nemotron-h-tiny", "--contexts", "1k,x")
    assert code != 0 and "bad context length" in err


def test_analyze_int8_kv_cache_bytes_equal_a_real_int8_cache(cli):
    code, out, _ = cli("analyze", "llama-tiny", "--context", "50", "--batch", "2", "--dtype", "float32",
                       "--kv-cache", "int8", "--json")
    assert code == 0
    result = json.loads(out)
    cfg = get_preset("llama-tiny")
    model = Decoder(cfg).eval()
    cache = model.new_cache(2, kind="static", max_len=50, kv_dtype="int8")
    with torch.no_grad():
        model(torch.randint(0, cfg.vocab_size, (2, 50)), cache)
    assert result["kv_dtype"] == "int8"
    assert result["cache_bytes_at_context"] == cache.nbytes()
    assert result["cache_bytes_per_token"] < 0.3 * result["kv_bytes_per_token_in_dtype"]
