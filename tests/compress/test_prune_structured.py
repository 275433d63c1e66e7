"""Structured pruning removes exactly what it says: a removed MLP channel, attention head or layer
gives the logits of the original model with that structure zeroed (or skipped)."""

import copy

import pytest
import torch

from hybridlm.compress.prune import PruneConfig, PruneError, prune_model
from hybridlm.compress.prune.structured import (keep_heads, keep_highest, layer_units, remove_heads, remove_layers,
                                                remove_mlp_channels)
from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset
from tests.compress.prune_helpers import calibration, ids, tiny


def logits(model, x=None):
    with torch.no_grad():
        return model(ids() if x is None else x)


def test_keeping_every_channel_is_the_original_model_exactly():
    model = tiny()
    same = remove_mlp_channels(model, {1: torch.arange(96), 3: torch.arange(96)})
    assert same.config == model.config
    assert torch.equal(logits(same), logits(model))


def test_removing_channels_equals_zeroing_their_gate_and_up_rows():
    model = tiny()
    keep = {1: torch.tensor(sorted(torch.randperm(96)[:60].tolist())), 3: torch.arange(36, 96)}
    pruned = remove_mlp_channels(model, keep)
    assert pruned.config.d_ff == 60 and pruned.blocks[1].mixer.w_in.weight.shape == (120, 48)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for i, k in keep.items():
            gone = torch.tensor(sorted(set(range(96)) - set(k.tolist())))
            zeroed.blocks[i].mixer.w_in.weight[gone] = 0  # gate rows
            zeroed.blocks[i].mixer.w_in.weight[gone + 96] = 0  # up rows
    torch.testing.assert_close(logits(pruned), logits(zeroed), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(pruned), logits(model), atol=1e-3)  # something was removed


def test_removing_channels_of_a_plain_mlp_with_biases():
    model = tiny(mlp="gelu", mlp_bias=True, qkv_bias=True)
    keep = {1: torch.arange(0, 96, 2), 3: torch.arange(1, 96, 2)}
    pruned = remove_mlp_channels(model, keep)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for i, k in keep.items():
            gone = torch.tensor(sorted(set(range(96)) - set(k.tolist())))
            zeroed.blocks[i].mixer.w_out.weight[:, gone] = 0  # gelu(bias) != 0: zero what carries it out
    torch.testing.assert_close(logits(pruned), logits(zeroed), rtol=1e-5, atol=1e-5)


def _zero_heads(model, removed_q):
    zeroed = copy.deepcopy(model)
    d = model.config.head_dim
    with torch.no_grad():
        for i, heads in removed_q.items():
            for h in heads:
                zeroed.blocks[i].mixer.wo.weight[:, h * d:(h + 1) * d] = 0
    return zeroed


def test_removing_query_heads_per_group_equals_zeroing_their_output_columns():
    model = tiny()  # 6 query heads, 2 KV groups of 3
    keep_q = {0: torch.tensor([0, 2, 3, 4]), 2: torch.tensor([1, 2, 4, 5])}  # 2 per group in each block
    keep_kv = {0: torch.arange(2), 2: torch.arange(2)}
    pruned = remove_heads(model, keep_q, keep_kv)
    assert (pruned.config.n_heads, pruned.config.n_kv_heads, pruned.config.head_dim) == (4, 2, 8)
    zeroed = _zero_heads(model, {0: [1, 5], 2: [0, 3]})
    torch.testing.assert_close(logits(pruned), logits(zeroed), rtol=1e-5, atol=1e-5)


def test_removing_a_kv_group_with_its_query_heads_equals_zeroing_them():
    model = tiny(n_heads=6, n_kv_heads=3)  # 3 groups of 2
    keep_q = {0: torch.tensor([0, 1, 4, 5]), 2: torch.tensor([2, 3, 4, 5])}
    keep_kv = {0: torch.tensor([0, 2]), 2: torch.tensor([1, 2])}
    pruned = remove_heads(model, keep_q, keep_kv)
    assert (pruned.config.n_heads, pruned.config.n_kv_heads) == (4, 2)
    zeroed = _zero_heads(model, {0: [2, 3], 2: [0, 1]})
    torch.testing.assert_close(logits(pruned), logits(zeroed), rtol=1e-5, atol=1e-5)


def test_heads_that_break_the_gqa_map_are_refused():
    model = tiny()
    with pytest.raises(PruneError, match="same number in every group"):
        remove_heads(model, {0: torch.tensor([0, 1, 3]), 2: torch.tensor([0, 1, 3])},
                     {0: torch.arange(2), 2: torch.arange(2)})
    with pytest.raises(PruneError, match="removed KV group"):
        remove_heads(model, {0: torch.tensor([0, 3]), 2: torch.tensor([0, 3])},
                     {0: torch.tensor([0]), 2: torch.tensor([0])})


def _skipping(model, blocks):
    skipped = copy.deepcopy(model)
    for b in blocks:
        skipped.blocks[b].forward = lambda x, *args, **kwargs: x
    return skipped


def test_removing_layers_equals_skipping_their_blocks():
    model = tiny(n_layers=4)
    pruned = remove_layers(model, [0, 2])
    assert pruned.config.n_layers == 2 and len(pruned.blocks) == 4
    torch.testing.assert_close(logits(pruned), logits(_skipping(model, [2, 3, 6, 7])), rtol=1e-5, atol=1e-5)


def test_a_hybrid_pattern_loses_single_blocks():
    torch.manual_seed(0)
    model = Decoder(get_preset("nemotron-h-tiny")).eval()  # "M-M*-M-"
    assert layer_units(model.config) == [(i,) for i in range(7)]
    pruned = remove_layers(model, [0, 1, 3, 4, 5, 6])  # drop the second Mamba block
    assert pruned.config.pattern == "M-*-M-"
    x = torch.randint(0, 1024, (1, 12))
    torch.testing.assert_close(logits(pruned, x), logits(_skipping(model, [2]), x), rtol=1e-5, atol=1e-5)


def test_keep_helpers_drop_the_lowest_scores():
    assert keep_highest(torch.tensor([3.0, 1.0, 2.0, 1.0]), 2).tolist() == [0, 2]  # ties: the earlier goes
    q = torch.tensor([5.0, 1.0, 4.0, 9.0, 8.0, 0.5])  # groups (0, 1, 2) and (3, 4, 5)
    assert [t.tolist() for t in keep_heads(q, torch.zeros(2), 2, 1, "query")] == [[0, 2, 3, 4], [0, 1]]
    assert [t.tolist() for t in keep_heads(q, torch.zeros(2), 2, 1, "group")] == [[3, 4, 5], [1]]


@pytest.mark.parametrize("method, amount, expect", [
    ("channels", 0.25, {"d_ff": 72}), ("heads", 0.34, {"n_heads": 4, "n_kv_heads": 2}),
    ("layers", 0.5, {"n_layers": 1})])
def test_prune_model_shrinks_the_config_and_reports_parameters(method, amount, expect):
    model = tiny()
    pruned, summary = prune_model(model, PruneConfig(method, amount=amount), calibration())
    for key, value in expect.items():
        assert getattr(pruned.config, key) == value
    assert summary.params_after == sum(p.numel() for p in pruned.parameters()) < summary.params_before
    assert summary.params_before == sum(p.numel() for p in model.parameters())  # the input is unchanged
    assert logits(pruned).shape == logits(model).shape
