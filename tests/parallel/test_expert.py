"""Expert parallelism: two gloo processes (ep_worker.py, run inside tp_worker.py's launch), each with
its own tokens and half the experts, give the unsplit model's loss and gradients on all the tokens."""

import json

import pytest

from hybridlm.models import build_model
from hybridlm.parallel.expert import check_expert_parallel
from hybridlm.presets import get_preset


def test_ep2_matches_one_process(tp_run):
    out = tp_run[0]
    ranks = [json.loads((out / f"ep_{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert abs(r["loss"] - r["ref_loss"]) < 1e-5  # the sum of the ranks' shares is the whole batch's mean
        assert r["grad_rel_err"] < 1e-5  # experts directly; replicated parameters after the dp all-reduce
        assert r["routed"] == 2 * 2 * r["local_tokens"]  # k = 2 choices per local token, 2 MoE layers
    held = [{n.split(".w_")[0] for n in r["expert_params"]} for r in ranks]
    assert held[0].isdisjoint(held[1]) and len(held[0]) == len(held[1]) == 4  # 2 experts x 2 layers each
    everything = {n.split(".w_")[0] for n in dict(build_model(get_preset("mixtral-tiny", n_layers=2, n_experts=4))
                                                  .named_parameters()) if ".experts." in n}
    assert held[0] | held[1] == everything


def test_refusals():
    with pytest.raises(ValueError, match="n_experts = 8"):
        check_expert_parallel(get_preset("mixtral-tiny"), 3)
    with pytest.raises(ValueError, match="capacity"):
        check_expert_parallel(get_preset("mixtral-tiny", moe_capacity_factor=1.25), 2)
    with pytest.raises(ValueError, match="no"):
        check_expert_parallel(get_preset("llama-tiny"), 2)
