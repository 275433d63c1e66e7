"""Tensor parallelism: two gloo processes (tp_worker.py under torchrun) give the loss and gradients of
the unsplit model for a dense, an MoE and a hybrid tiny model, and sharded checkpoints move between
TP sizes; the plan's bookkeeping is checked without processes."""

import pytest
import torch
from safetensors.torch import load_file

from hybridlm.models import build_model
from hybridlm.parallel.checkpoint import load_sharded
from hybridlm.parallel.tensor import check_tensor_parallel, deinterleave, interleave, shard_specs
from hybridlm.presets import get_preset




MODEL_CONFIGS = {"dense": ("llama-tiny", {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 96}),
                 "moe": ("mixtral-tiny", {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64,
                                          "n_experts": 4, "moe_impl": "fast"}),
                 "hybrid": ("nemotron-h-tiny", {"d_model": 64, "d_ff": 96})}  # as in tp_worker.py


@pytest.mark.parametrize("model", ["dense", "moe", "hybrid"])
def test_tp2_matches_one_process(tp_run, model):
    r = tp_run[1][model]
    assert abs(r["loss"] - r["ref_loss"]) < 1e-5
    assert r["grad_rel_err"] < 1e-5  # every parameter's gradient, gathered back to canonical order
    assert r["n_split"] > 0 and r["local_params"] < r["full_params"]  # the matrices really are split


@pytest.mark.parametrize("model", ["dense", "moe", "hybrid"])
def test_cost_model_predicts_the_measured_split(tp_run, model):
    """analysis/parallel.py against the gloo run: parameters held per rank, and the all-reduces of one
    forward + backward counted by CommDebugMode (every expert got tokens in this batch)."""
    from hybridlm.analysis.parallel import stage_parameters, tp_all_reduces

    r = tp_run[1][model]
    cfg = get_preset(MODEL_CONFIGS[model][0], **MODEL_CONFIGS[model][1])
    assert r["local_params"] == stage_parameters(cfg, tp=2, pp=1)[0]
    assert r["all_reduces"] == tp_all_reduces(cfg, 2) > 0


def test_tp1_checkpoint_resumes_at_tp2(tp_run):
    r = tp_run[1]["checkpoint"]
    assert r["saved_step"] == 1
    assert r["load_err"] == 0.0 and r["moment_err"] == 0.0  # weights and AdamW moments exactly
    assert abs(r["loss_split"] - r["loss_plain"]) < 1e-5
    assert r["param_err_after_step"] < 1e-5  # the next step moves both the same


def test_tp2_checkpoint_resumes_in_one_process(tp_run):
    out = tp_run[0]
    full = load_file(out / "full.safetensors")  # what rank 0 gathered from the split model
    cfg = get_preset("nemotron-h-tiny", d_model=64, d_ff=96)
    torch.manual_seed(3)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    state = load_sharded(out / "ckpt_tp2", model, None, opt)
    assert state["step"] == 2 and state["tp"] == 2
    for name, t in model.state_dict().items():
        torch.testing.assert_close(t, full[name], rtol=0, atol=0, msg=name)
    for name, p in model.named_parameters():
        torch.testing.assert_close(opt.state[p]["exp_avg"], full[f"{name}::exp_avg"], rtol=0, atol=0, msg=name)
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(2))
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert abs(loss.item() - tp_run[1]["checkpoint"]["next_loss"]) < 1e-5


@pytest.mark.parametrize("segments,tp", [((6, 2, 2), 2), ((8, 4, 4, 2), 2), ((12,), 3), ((4, 8), 4)])
def test_interleave_round_trip_and_rank_slices(segments, tp):
    t = torch.arange(sum(segments) * 3).view(sum(segments), 3)
    mixed = interleave(t, segments, tp, 0)
    assert torch.equal(deinterleave(mixed, segments, tp, 0), t)
    parts = t.split(list(segments))
    for r, local in enumerate(mixed.chunk(tp)):  # rank r holds the r-th 1/tp of every part, in order
        assert torch.equal(local, torch.cat([p.chunk(tp)[r] for p in parts]))


def test_specs_cover_the_model_and_refusals_are_clear():
    cfg = get_preset("nemotron-h-tiny")
    names = dict(build_model(cfg).named_parameters())
    for name, spec in shard_specs(cfg).items():
        assert names[name].shape[spec.dim] == sum(spec.segments), name
    check_tensor_parallel(cfg, 2)
    with pytest.raises(ValueError, match="mamba_n_groups = 2"):
        check_tensor_parallel(get_preset("nemotron-h-tiny", n_kv_heads=4), 4)  # 8 Mamba heads would split, but 2 B/C groups do not
    with pytest.raises(ValueError, match="n_kv_heads = 2"):
        check_tensor_parallel(get_preset("llama-tiny"), 4)
    with pytest.raises(ValueError, match="decoder"):
        check_tensor_parallel(get_preset("bert-tiny"), 2)
