"""quantize_model: every method on tiny models, the checks made before any weight is touched, the
linears chosen, the registry's extension point, and the sequential driver's order."""

import copy

import pytest
import torch
from torch import nn

from hybridlm.compress import Calibration, CompressError, QuantizeConfig, quantize_model
from hybridlm.compress import registry
from hybridlm.compress.grid import UniformGrid
from hybridlm.compress.rtn import rtn_quantize
from hybridlm.compress.sequential import InputStats, capture_block_inputs, quantize_sequentially, run_block
from hybridlm.models.decoder import Decoder
from hybridlm.nn.quant import QuantLinear
from hybridlm.presets import get_preset


def _model(preset="llama-tiny"):
    torch.manual_seed(0)
    return Decoder(get_preset(preset)).eval()


def _calib(vocab, n=4, length=32):
    return Calibration(torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(1)), "random")


CASES = [("rtn", {}), ("rtn", dict(bits=8)), ("rtn", dict(group_size="tensor", symmetric=True)),
         ("gptq", {}), ("gptq", dict(act_order=True, group_size=32)), ("awq", {}), ("awq", dict(bits=8)),
         ("nf4", {}), ("kmeans", {}), ("kmeans", dict(kmeans_per="tensor", group_size=32)), ("fp8", {}),
         ("fp8", dict(fp8_format="e5m2", group_size=64)), ("fp4", {})]


@pytest.mark.parametrize("method, options", CASES)
def test_every_method_swaps_every_linear_but_the_head_and_stays_close(method, options):
    model = _model()
    ids = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids)
    summary = quantize_model(model, QuantizeConfig(method=method, **options), _calib(1024))
    quant = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert quant == summary.linears and len(quant) == 4 * 4  # wqkv, wo, w_in, w_out per layer
    assert type(model.lm_head) is nn.Linear
    assert not any(type(m) is nn.Linear for n, m in model.named_modules() if n.startswith("blocks"))
    with torch.no_grad():
        out = model(ids)
    rel = ((out - ref).norm() / ref.norm()).item()
    # a random model's logits are small, so these bounds are loose: int8 ~1%, fp8 ~6-11%, 4-bit ~15-35%
    bound = 0.4 if summary.config.bits == 4 else 0.15 if method == "fp8" else 0.03
    assert rel < bound, rel
    assert summary.ratio < (0.27 if summary.config.bits == 8 else 0.24)


def test_bytes_of_int4_group_32_asymmetric():
    model = _model()
    summary = quantize_model(model, QuantizeConfig(method="rtn", bits=4, group_size=32, symmetric=False))
    weights = sum(model.get_submodule(n).in_features * model.get_submodule(n).out_features for n in summary.linears)
    # half a byte per weight, then a float16 scale and offset per 32 weights
    assert summary.quantized_bytes == weights // 2 + weights // 32 * 4
    assert summary.float32_bytes == 4 * weights
    assert summary.ratio == pytest.approx(0.15625)


def test_head_quantized_on_request_and_the_embedding_untouched():
    model = _model("qwen3-tiny")  # tied embeddings
    embed = model.embed.weight.detach().clone()
    quantize_model(model, QuantizeConfig(method="rtn", include_head=True))
    assert isinstance(model.lm_head, QuantLinear)
    assert torch.equal(model.embed.weight, embed)


def test_moe_router_stays_float():
    model = _model("mixtral-tiny")
    summary = quantize_model(model, QuantizeConfig(method="gptq"), _calib(1024))
    assert not any(n.endswith("router") for n in summary.linears)
    assert all(type(b.mixer.router) is nn.Linear for b in model.blocks if b.kind == "moe")
    assert any(".experts." in n for n in summary.linears)


@pytest.mark.parametrize("options, message", [
    (dict(method="int3"), "unknown quantization method"),
    (dict(method="nf4", bits=8), "nf4 quantizes to 4 bits, not 8"),
    (dict(method="rtn", bits=3), "rtn quantizes to 4 or 8 bits, not 3"),
    (dict(method="rtn", bits=8, symmetric=False), "symmetric only"),
    (dict(method="rtn", group_size=48), "not a multiple of 32"),
    (dict(method="rtn", group_size=96), "does not divide the 128 inputs"),
    (dict(method="rtn", bits=8, group_size=100), "does not divide"),
    (dict(method="gptq"), "needs calibration data"),
    (dict(method="rtn", act_order=True), "GPTQ option"),
    (dict(method="nf4", symmetric=True), "uniform grids"),
    (dict(method="fp8", group_size="tensor"), "per-tensor"),
    (dict(method="fp8", fp8_format="e3m4"), "e4m3 or e5m2"),
])
def test_bad_requests_fail_before_any_weight_changes(options, message):
    model = _model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CompressError, match=message):
        quantize_model(model, QuantizeConfig(**options))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_an_already_quantized_model_is_refused():
    model = _model()
    quantize_model(model, QuantizeConfig(method="rtn"))
    with pytest.raises(CompressError, match="already quantized"):
        quantize_model(model, QuantizeConfig(method="nf4"))


def test_a_method_is_one_function_and_one_registry_entry(monkeypatch):
    seen = []

    def halve_then_rtn(name, weight, cfg, stats=None):  # a toy method: RTN of half the weight
        seen.append(name)
        return rtn_quantize(weight / 2, UniformGrid(cfg.bits, cfg.symmetric, cfg.group_size))

    table = dict(registry.methods())
    table["half"] = registry.Method(registry.per_linear(halve_then_rtn), (4,), {4: 32}, "none", "toy", uniform=True)
    monkeypatch.setattr(registry, "methods", lambda: table)
    model = _model()
    w = model.blocks[0].mixer.wqkv.weight.detach().clone()
    quantize_model(model, QuantizeConfig(method="half"))
    assert len(seen) == 16
    expected = rtn_quantize(w / 2, UniformGrid(4, False, 32)).dequantize()
    assert torch.equal(model.blocks[0].mixer.wqkv.weight_q.dequantize(), expected)


def test_driver_blocks_reproduce_the_model_forward():
    model = _model()
    calib = _calib(1024)
    batches = capture_block_inputs(model, calib, tokens_per_batch=64)
    for block in model.blocks:
        batches = run_block(block, batches)
    with torch.no_grad():
        logits = torch.cat([model.lm_head(model.final_norm(b.hidden)) for b in batches])
        torch.testing.assert_close(logits, model(calib.ids), rtol=1e-5, atol=1e-5)


def test_each_linear_is_calibrated_on_the_inputs_of_the_quantized_model_before_it():
    # true sequential: the statistics each linear was quantized with are exactly those of its input
    # in the final model, where everything before it is already quantized
    model = _model()
    calib = _calib(1024)
    recorded = {}

    def quantize(name, linear, stats):
        recorded[name] = stats
        return QuantLinear(rtn_quantize(linear.weight, UniformGrid(4, False, 32)), linear.bias)

    targets = {n: m for n, m in model.named_modules() if type(m) is nn.Linear and n != "lm_head"}
    quantize_sequentially(model, targets, calib, quantize)
    final = {name: InputStats(model.get_submodule(name).in_features) for name in targets}
    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: final[n].add(a[0])) for n in targets]
    with torch.no_grad():
        for ids in calib.batches():
            model(ids)
    for h in hooks:
        h.remove()
    for name in targets:
        torch.testing.assert_close(recorded[name].gram(), final[name].gram(), rtol=1e-4, atol=1e-5)
    # and it matters: the float model's inputs to the last linear differ from these
    float_model = _model()
    stats = InputStats(128 * 4)
    h = float_model.blocks[-1].mixer.w_out.register_forward_pre_hook(lambda m, a: stats.add(a[0]))
    with torch.no_grad():
        float_model(calib.ids)
    h.remove()
    assert not torch.allclose(stats.gram(), recorded["blocks.7.mixer.w_out"].gram(), rtol=1e-4, atol=1e-6)
