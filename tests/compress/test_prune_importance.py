"""Every importance source ranks a planted unimportant channel, head, KV group and layer last, and
pruning then removes exactly it."""

import pytest
import torch

from hybridlm.compress.prune import PruneConfig, prune_model
from hybridlm.compress.prune.importance import block_influence, head_scores, layer_scores, mlp_channel_scores
from hybridlm.compress.prune.structured import keep_heads
from tests.compress.prune_helpers import calibration, ids, tiny

IMPORTANCES = ["weight", "activation", "gradient"]


def _planted_channel(model, channel=17):
    with torch.no_grad():
        for i in (1, 3):
            model.blocks[i].mixer.w_out.weight[:, channel] *= 1e-3  # what it writes barely matters
    return channel


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_a_planted_weak_channel_ranks_last_and_is_removed(importance):
    model, calib = tiny(), calibration()
    channel = _planted_channel(model)
    for i, scores in mlp_channel_scores(model, importance, calib).items():
        assert scores.shape == (96,) and int(scores.argmin()) == channel, i
    pruned, summary = prune_model(model, PruneConfig("channels", amount=0.01, importance=importance), calib)
    assert summary.removed["channels"] == {1: [channel], 3: [channel]}
    assert pruned.config.d_ff == 95


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_a_planted_weak_query_head_ranks_last_in_its_group(importance):
    model, calib = tiny(), calibration()  # 6 query heads, 2 KV groups
    d = model.config.head_dim
    with torch.no_grad():
        for i in (0, 2):
            model.blocks[i].mixer.wo.weight[:, 4 * d:5 * d] *= 1e-3  # query head 4, in group 1
    for i, (q, kv) in head_scores(model, importance, calib).items():
        assert int(q.argmin()) == 4, i
        assert keep_heads(q, kv, 2, 1, "query")[0].tolist()[2:] == [3, 5]  # group 1 lost head 4
    pruned, summary = prune_model(model, PruneConfig("heads", amount=0.34, importance=importance), calib)
    assert summary.removed["query_heads"][0][1] == 4 and summary.removed["kv_heads"][0] == []
    assert (pruned.config.n_heads, pruned.config.n_kv_heads) == (4, 2)


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_a_planted_weak_kv_group_is_removed_whole(importance):
    model, calib = tiny(n_heads=6, n_kv_heads=3), calibration()  # groups (0, 1), (2, 3), (4, 5)
    d = model.config.head_dim
    with torch.no_grad():
        for i in (0, 2):
            model.blocks[i].mixer.wo.weight[:, 2 * d:4 * d] *= 1e-3  # both query heads of group 1
    pruned, summary = prune_model(model, PruneConfig("heads", amount=0.34, importance=importance, head_unit="group"),
                                  calib)
    assert summary.removed["kv_heads"] == {0: [1], 2: [1]}
    assert summary.removed["query_heads"] == {0: [2, 3], 2: [2, 3]}
    assert (pruned.config.n_heads, pruned.config.n_kv_heads) == (4, 2)


@pytest.mark.parametrize("importance", ["activation", "gradient"])
def test_a_planted_near_identity_layer_ranks_last(importance):
    model, calib = tiny(n_layers=4), calibration()
    with torch.no_grad():  # layer 2 adds almost nothing to the residual stream
        model.blocks[4].mixer.wo.weight *= 1e-3
        model.blocks[5].mixer.w_out.weight *= 1e-3
    scores = layer_scores(model, importance, calib)
    assert scores.shape == (4,) and int(scores.argmin()) == 2
    pruned, summary = prune_model(model, PruneConfig("layers", amount=0.25, importance=importance), calib)
    assert summary.removed["layers"] == [2] and pruned.config.n_layers == 3


def test_block_influence_is_one_minus_cosine_of_the_layer_input_and_output():
    model, calib = tiny(), calibration(n=2)
    seen = {}
    model.blocks[2].register_forward_pre_hook(lambda m, a: seen.setdefault("in", []).append(a[0]))
    model.blocks[3].register_forward_hook(lambda m, a, out: seen.setdefault("out", []).append(out))
    with torch.no_grad():
        model(calib.ids)
    cos = torch.nn.functional.cosine_similarity(seen["in"][0], seen["out"][0], dim=-1)
    for block in model.blocks:
        block._forward_pre_hooks.clear()
        block._forward_hooks.clear()
    assert block_influence(model, calib)[1].item() == pytest.approx(1 - cos.mean().item(), rel=1e-5)


def test_scores_leave_the_model_unchanged():
    model, calib = tiny(), calibration()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(ids())
    mlp_channel_scores(model, "gradient", calib)
    head_scores(model, "activation", calib)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(ids()), out)
