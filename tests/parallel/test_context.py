"""Context parallelism: two gloo processes (cp_worker.py, inside tp_worker.py's launch), each holding
half of every sequence, give the unsplit model's logits, loss and gradients, with ring attention and
with the all-gathered K/V."""

import json

from pathlib import Path

import pytest

from hybridlm.models import build_model
from hybridlm.parallel.context import check_context_parallel
from hybridlm.presets import get_preset

from .conftest import torchrun


@pytest.mark.parametrize("attention", ["ring", "allgather"])
@pytest.mark.parametrize("model", ["dense", "moe", "learned_positions"])
def test_cp2_matches_one_process(tp_run, model, attention):
    r = json.loads((tp_run[0] / "cp.json").read_text())[f"{model}-{attention}"]
    assert r["logit_err"] < 1e-5  # this rank's half of the sequence, attending over both halves
    assert abs(r["loss"] - r["ref_loss"]) < 1e-5
    assert r["grad_rel_err"] < 1e-5  # every parameter, after the cp group's all-reduce


@pytest.mark.slow  # a launch of its own: 4 ranks, so the ring's blocks travel more than one hop
@pytest.mark.parametrize("attention", ["ring", "allgather"])
def test_cp4_matches_one_process(tmp_path, attention):
    torchrun(Path(__file__).with_name("cp_worker.py"), 4, tmp_path)
    for model, r in json.loads((tmp_path / "cp.json").read_text()).items():
        if model.endswith(attention):
            assert r["logit_err"] < 1e-5 and abs(r["loss"] - r["ref_loss"]) < 1e-5 and r["grad_rel_err"] < 1e-5, model


def test_refusals():
    with pytest.raises(ValueError, match="Mamba"):
        check_context_parallel(build_model(get_preset("nemotron-h-tiny")), 2, 64)
    with pytest.raises(ValueError, match="sliding"):
        check_context_parallel(build_model(get_preset("mistral-tiny")), 2, 64)
    with pytest.raises(ValueError, match="divide"):
        check_context_parallel(build_model(get_preset("llama-tiny")), 2, 63)
