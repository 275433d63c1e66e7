"""AWQ: lower error than RTN on a layer with outlier input channels; its folds leave the float model
unchanged (attention with GQA, GLU and plain MLPs, LayerNorm with bias, Mamba-2)."""

import copy

import pytest
import torch

from hybridlm.compress.awq import (apply_scale, awq_quantize, output_error, scale_groups, search_clip, search_scale,
                                  weight_mean)
from hybridlm.compress.grid import UniformGrid, fake_quantize
from hybridlm.compress.rtn import rtn_quantize
from hybridlm.compress.sequential import InputStats
from hybridlm.models.decoder import Decoder
from hybridlm.nn.quant import dequantize_ref
from hybridlm.presets import get_preset


def _outlier_inputs(n=4096, d=256, seed=0):
    """Activations where a few channels are ~30x larger than the rest (as in LLM hidden states)."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    x[:, [c for c in (3, 50, 77, 200) if c < d]] *= 30
    return x


def _stats(x):
    st = InputStats(x.shape[1])
    st.add(x)
    return st


@pytest.mark.parametrize("grid", [UniformGrid(4, False, 64), UniformGrid(4, True, 128), UniformGrid(8, True, 256)])
def test_awq_output_error_below_rtn_with_outlier_channels(grid):
    x, x_test = _outlier_inputs(), _outlier_inputs(seed=1)
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(2))
    st = _stats(x)
    s, alpha = search_scale([w], st.mean_abs(), st.gram(), [grid])
    assert alpha > 0  # the outliers make scaling worth it
    scaled_gram = st.gram() / (s[:, None] * s[None, :])
    effective = dequantize_ref(awq_quantize(w * s, scaled_gram, grid, clip=True)) / s  # x W^T = (x/s)(W s)^T

    def err(x, w_hat):
        return ((x @ w.T - x @ w_hat.T) ** 2).mean().item()

    rtn = dequantize_ref(rtn_quantize(w, grid))
    assert err(x_test, effective) < 0.8 * err(x_test, rtn)


def test_duo_scaling_is_searched_too_and_never_does_worse():
    x = _outlier_inputs()
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(4))
    w[:, 50] *= 6  # an outlier input whose weights are also large in their groups: duo scales it less
    grid, st = UniformGrid(4, False, 64), _stats(x)

    def err(s):
        return output_error(w - fake_quantize(w * s, grid) / s, st.gram()).item()

    s_x, _ = search_scale([w], st.mean_abs(), st.gram(), [grid])
    s_duo, _ = search_scale([w], st.mean_abs(), st.gram(), [grid], duo=True)
    assert err(s_duo) <= err(s_x)
    # w_mean: |w| over its group's absmax, averaged over rows (every entry in (0, 1])
    m = weight_mean([w], [grid])
    g = w.abs().view(128, 4, 64)
    torch.testing.assert_close(m, (g / g.amax(-1, keepdim=True)).view(128, 256).mean(0))


def test_scales_of_a_gqa_output_projection_are_tied_per_kv_channel():
    x = _outlier_inputs(d=64)
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(6))
    st = _stats(x)
    for duo in (False, True):
        s, alpha = search_scale([w], st.mean_abs(), st.gram(), [UniformGrid(4, False, 32)], tie=(2, 2, 16), duo=duo)
        assert alpha > 0
        heads = s.view(2, 2, 16)
        assert torch.equal(heads[:, 0], heads[:, 1])


def test_clip_search_never_raises_the_per_group_error():
    x = _outlier_inputs(d=128)
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(3))
    w[:, 7] *= 8  # weight outliers: clipping them pays
    grid = UniformGrid(4, False, 32)
    gram = _stats(x).gram()
    ratio = search_clip(w, gram, grid)
    assert (ratio <= 1).all() and (ratio < 1).any()
    clipped = dequantize_ref(awq_quantize(w, gram, grid, clip=True))
    full = fake_quantize(w, grid)

    def group_err(w_hat):
        d = (w - w_hat).view(64, 4, 32)
        blocks = torch.stack([gram[j * 32:(j + 1) * 32, j * 32:(j + 1) * 32] for j in range(4)])
        return torch.einsum("ogc,gcd,ogd->og", d, blocks, d)

    assert (group_err(clipped) <= group_err(full) * (1 + 1e-5) + 1e-6).all()


def _randomised(preset):
    torch.manual_seed(0)
    model = Decoder(get_preset(preset)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny", "nemotron-h-tiny", "qwen3-tiny"])
def test_folded_scales_leave_the_float_model_unchanged(preset):
    model = _randomised(preset)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids)
    folded = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(2)
    n_groups = 0
    for i, block in enumerate(folded.blocks):
        for group in scale_groups(block, f"blocks.{i}."):
            if group.fold is None:
                continue
            linears = {n: folded.get_submodule(n) for n in group.linears}
            n_in = next(iter(linears.values())).in_features
            s = torch.rand(n_in, generator=gen) * 3 + 0.25
            if group.tie is not None:  # one scale per kv channel, shared by its query heads
                kv, rep, d = group.tie
                s = s[:kv * d].view(kv, 1, d).expand(kv, rep, d).reshape(-1)
            stats = {n: _stats(torch.randn(4, n_in)) for n in group.linears}
            apply_scale(group, s, linears, stats)
            n_groups += 1
    assert n_groups >= len(folded.blocks)  # something was folded in every block
    with torch.no_grad():
        after = folded(ids)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert not torch.equal(folded.blocks[0].norm.weight, model.blocks[0].norm.weight)
