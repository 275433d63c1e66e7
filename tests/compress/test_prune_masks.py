"""Unstructured magnitude and 2:4 masks: the right weights go, the shape stays, the count is exact."""

import copy

import pytest
import torch

from hybridlm.compress.prune import PruneConfig, prune_model
from hybridlm.compress.prune.importance import input_sq_norms, prunable_linears, weight_scores
from hybridlm.compress.prune.magnitude import keep_mask, magnitude_masks
from hybridlm.compress.prune.sparsity24 import follows_n_m
from tests.compress.prune_helpers import calibration, tiny


def test_keep_mask_removes_exactly_the_lowest_with_ties_broken_by_index():
    scores = torch.tensor([[1.0, 0.5, 0.5], [0.5, 2.0, 0.1]])
    assert keep_mask(scores, 3).tolist() == [[True, False, False], [True, True, False]]  # 0.1, then 0.5s in order
    assert keep_mask(scores, 0).all()


def test_layer_scope_removes_the_smallest_weights_of_every_linear():
    model = tiny()
    original = {n: m.weight.detach().clone() for n, m in prunable_linears(model).items()}
    pruned, summary = prune_model(model, PruneConfig("magnitude", amount=0.3))
    assert pruned is model  # masks: the same model, the same shapes
    for name, w0 in original.items():
        w = model.get_submodule(name).weight
        assert w.shape == w0.shape
        gone = w == 0
        assert int(gone.sum()) == round(0.3 * w.numel())
        assert w0[~gone].abs().min() >= w0[gone].abs().max()  # the largest weights are the ones kept
        assert torch.equal(w[~gone], w0[~gone])  # and kept as they were
    assert summary.sparsity == pytest.approx(0.3, abs=1e-3)
    assert summary.params_after == summary.params_before and summary.nonzero_after < summary.nonzero_before


def test_global_scope_ranks_all_weights_together():
    model = tiny()
    with torch.no_grad():
        model.blocks[0].mixer.wo.weight.mul_(0.01)  # one linear of small weights: it should lose most
    original = {n: m.weight.detach().clone() for n, m in prunable_linears(model).items()}
    prune_model(model, PruneConfig("magnitude", amount=0.3, scope="global"))
    kept = torch.cat([w0[model.get_submodule(n).weight != 0].abs() for n, w0 in original.items()])
    gone = torch.cat([w0[model.get_submodule(n).weight == 0].abs() for n, w0 in original.items()])
    assert kept.min() >= gone.max()
    assert gone.numel() == round(0.3 * (kept.numel() + gone.numel()))
    assert (model.blocks[0].mixer.wo.weight == 0).float().mean() > 0.9
    assert (model.blocks[3].mixer.w_out.weight == 0).float().mean() < 0.3


def test_two_four_keeps_the_two_largest_of_every_four_inputs():
    model = tiny()
    original = {n: m.weight.detach().clone() for n, m in prunable_linears(model).items()}
    _, summary = prune_model(model, PruneConfig("2:4"))
    assert summary.config.amount == 0.5 and summary.sparsity == pytest.approx(0.5)
    for name, w0 in original.items():
        w = model.get_submodule(name).weight
        assert follows_n_m(w, 2, 4)
        runs0, runs = w0.abs().view(w.shape[0], -1, 4), w.view(w.shape[0], -1, 4)
        kept_min = torch.where(runs != 0, runs0, torch.inf).amin(-1)
        gone_max = torch.where(runs == 0, runs0, -torch.inf).amax(-1)
        assert (kept_min >= gone_max).all()
    assert not follows_n_m(original["blocks.0.mixer.wo"], 2, 4)  # the check itself can fail


def test_wanda_scores_are_weight_times_input_norm():
    model, calib = tiny(), calibration()
    name = "blocks.1.mixer.w_out"
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 96)))
    with torch.no_grad():
        for batch in calib.batches():
            model(batch)
    handle.remove()
    x = torch.cat(seen)
    torch.testing.assert_close(input_sq_norms(model, [name], calib)[name], x.pow(2).sum(0))
    expected = model.get_submodule(name).weight.abs() * x.norm(dim=0)[None]
    torch.testing.assert_close(weight_scores(model, [name], "activation", calib)[name], expected)


def test_activation_importance_keeps_weights_on_strong_inputs():
    """Wanda's point: a small weight on a large input matters more than a large one on a small input."""
    model, calib = tiny(), calibration()
    name, strong, weak = "blocks.1.mixer.w_out", 0, 1
    with torch.no_grad():
        w_in, w = model.blocks[1].mixer.w_in.weight, model.get_submodule(name).weight
        w_in[96 + strong] *= 100  # the up row: channel 0's activation is 100x larger
        w_in[96 + weak] *= 0.01
        w[:, strong] = 0.1 * w.abs().mean()
        w[:, weak] = 10 * w.abs().mean()
    by_weight, by_activation = copy.deepcopy(model), copy.deepcopy(model)
    prune_model(by_weight, PruneConfig("magnitude", amount=0.5))
    prune_model(by_activation, PruneConfig("magnitude", amount=0.5, importance="activation"), calib)
    assert (by_weight.get_submodule(name).weight[:, strong] == 0).all()
    assert (by_weight.get_submodule(name).weight[:, weak] != 0).all()
    assert (by_activation.get_submodule(name).weight[:, strong] != 0).all()
    assert (by_activation.get_submodule(name).weight[:, weak] == 0).all()


def test_magnitude_masks_global_and_layer_differ_only_in_ranking():
    scores = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([[10.0, 20.0], [30.0, 40.0]])}
    layer = magnitude_masks(scores, 0.5, "layer")
    glob = magnitude_masks(scores, 0.5, "global")
    assert layer["a"].sum() == 2 and layer["b"].sum() == 2
    assert glob["a"].sum() == 0 and glob["b"].all()
