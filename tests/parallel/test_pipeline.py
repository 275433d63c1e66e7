"""Pipeline parallelism: two gloo processes (pp_worker.py) run torch's GPipe and 1F1B schedules over a
2-stage split of a dense and a hybrid tiny model and get the unsplit model's loss and gradients."""

import json
from pathlib import Path

import pytest

from hybridlm.analysis.parallel import stage_parameters
from hybridlm.models import build_model
from hybridlm.parallel.pipeline import check_pipeline
from hybridlm.presets import get_preset

from .conftest import torchrun

WORKER = Path(__file__).with_name("pp_worker.py")
CONFIGS = {"dense": ("llama-tiny", {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 96,
                                    "tie_embeddings": False}),
           "hybrid": ("nemotron-h-tiny", {"d_model": 64, "d_ff": 96})}  # as in pp_worker.py


@pytest.fixture(scope="module")
def pp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pp")
    torchrun(WORKER, 2, out)
    return [json.loads((out / f"pp_{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow  # ~20 s of process start-up: the default suite's budget goes to TP, EP and CP
@pytest.mark.parametrize("model", ["dense", "hybrid"])
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_two_stages_match_one_process(pp_run, model, schedule):
    first, last = (r[f"{model}-{schedule}"] for r in pp_run)
    assert first["loss"] is None and abs(last["loss"] - last["ref_loss"]) < 1e-5  # the loss lives on the last stage
    assert first["grad_rel_err"] < 1e-5 and last["grad_rel_err"] < 1e-5
    preset, overrides = CONFIGS[model]
    cfg = get_preset(preset, **overrides)
    names = set(dict(build_model(cfg).named_parameters()))
    assert set(first["params"]).isdisjoint(last["params"]) and set(first["params"]) | set(last["params"]) == names
    assert [first["n_params"], last["n_params"]] == stage_parameters(cfg, tp=1, pp=2)  # the cost model's split


def test_refusals():
    with pytest.raises(ValueError, match="untied"):
        check_pipeline(build_model(get_preset("gpt2-tiny")), 2)
    with pytest.raises(ValueError, match="exceeds"):
        check_pipeline(build_model(get_preset("nemotron-h-tiny")), 8)
