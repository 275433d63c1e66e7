"""The parallel cost model against the real split plan, and its layout search."""

import json

import pytest
import torch

from hybridlm.analysis.parallel import (ParallelSetup, device_memory, fitting_layouts, stage_blocks,
                                        stage_parameters, tp_problem)
from hybridlm.models.decoder import Decoder
from hybridlm.parallel.tensor import shard_specs
from hybridlm.presets import get_preset

CASES = [("gpt2-tiny", {}), ("llama-tiny", {}), ("mixtral-tiny", {"moe_shared_expert_d_ff": 64}),
         ("nemotron-h-tiny", {}), ("qwen3-tiny", {})]


@pytest.mark.parametrize("preset,overrides", CASES)
@pytest.mark.parametrize("tp", [1, 2])
def test_parameters_per_rank_match_the_split_plan(preset, overrides, tp):
    cfg = get_preset(preset, **overrides)
    with torch.device("meta"):
        model = Decoder(cfg)
    specs = shard_specs(cfg)
    held = sum(p.numel() // tp if name in specs else p.numel() for name, p in model.named_parameters())
    assert stage_parameters(cfg, tp, 1) == [held]


def test_pipeline_stages_cover_every_block_once():
    for n, pp in [(7, 1), (7, 2), (7, 7), (52, 8)]:
        stages = stage_blocks(n, pp)
        assert [i for r in stages for i in r] == list(range(n))
        assert max(map(len, stages)) - min(map(len, stages)) <= 1
    with pytest.raises(ValueError, match="exceeds"):
        stage_blocks(3, 4)
    cfg = get_preset("nemotron-h-tiny")
    one, two = stage_parameters(cfg, 1, 1)[0], stage_parameters(cfg, 1, 2)
    assert sum(two) == one  # untied: nothing is held twice across stages


def test_more_parallelism_means_less_memory_per_device():
    cfg = get_preset("nemotron-h-8b")
    base = device_memory(cfg, ParallelSetup(seq_len=4096))
    tp8 = device_memory(cfg, ParallelSetup(tp=8, seq_len=4096))
    zero3 = device_memory(cfg, ParallelSetup(dp=8, zero="zero3", seq_len=4096))
    assert tp8.weight_bytes < base.weight_bytes / 4 and tp8.activation_bytes < base.activation_bytes
    assert tp8.comm_bytes_per_step["tp"] > 0 == base.comm_bytes_per_step["tp"]
    assert zero3.optimizer_bytes == pytest.approx(base.optimizer_bytes / 8, rel=1e-6)
    assert zero3.comm_bytes_per_step["dp"] > 0


def test_fitting_layouts_fit_and_are_refused_when_impossible():
    cfg = get_preset("nemotron-h-8b")
    found = fitting_layouts(cfg, 8, 80e9, 8192)
    assert found and all(s.world_size == 8 and m.total_bytes <= 80e9 for s, m in found)
    assert all(tp_problem(cfg, s.tp) is None for s, _ in found)
    sent = [sum(m.comm_bytes_per_step.values()) for _, m in found]
    assert sent == sorted(sent)
    assert fitting_layouts(cfg, 1, 16e9, 8192) == []  # 8B parameters with AdamW need far more than 16 GB


def test_analyze_cli_layout_and_fit(capsys):
    from hybridlm.cli import main

    assert main(["analyze", "nemotron-h-8b", "--tp", "8", "--pp", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["layout"]["tp"] == 8 and out["total_bytes"] > out["weight_bytes"] > 0
    assert main(["analyze", "nemotron-h-8b", "--gpus", "8", "--gpu-memory", "80"]) == 0
    assert "layouts of 8 devices fit" in capsys.readouterr().out
    assert main(["analyze", "nemotron-h-8b", "--tp", "3"]) != 0
    assert "does not divide n_heads" in capsys.readouterr().err
