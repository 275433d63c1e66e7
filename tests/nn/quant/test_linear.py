"""QuantLinear's choice of kernel and activation mode, its state, and torch.compile over its op."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hybridlm.kernels import qmatmul
from hybridlm.nn.quant import (QuantizedWeight, QuantLinear, pack_int4, quant_linear_fast_ref, quant_linear_ref,
                               set_quant_modes)
from hybridlm.nn.quant.w8a8 import W8A8Linear


def int4_weight(n=12, k=128, asym=True, seed=0) -> QuantizedWeight:
    g = torch.Generator().manual_seed(seed)
    codes = pack_int4(torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8))
    scales = (torch.rand(n, k // 32, generator=g) * 0.1 + 0.01).half()
    offsets = (torch.randn(n, k // 32, generator=g) * 0.1).half() if asym else None
    return QuantizedWeight("int4", codes, scales, 32, k, offsets)


def lut8_weight(n=6, k=64) -> QuantizedWeight:
    return QuantizedWeight("lut8", torch.randint(0, 256, (n, k), dtype=torch.uint8), torch.rand(n, 2).half(), 32, k,
                           lut=torch.randn(256))


def close(a, b, rel=2e-6):
    return (a - b).abs().max() <= rel * b.abs().max()


def test_auto_picks_native_and_both_modes_match_their_references():
    w, bias = int4_weight(), torch.randn(12)
    m = QuantLinear(w, bias)
    assert m.kernel == "native" and m.act_mode == "exact"
    assert f"kernel=native ({qmatmul.isa()}), act_mode=exact" in m.extra_repr()
    x = torch.randn(3, 128)
    assert close(m(x), quant_linear_ref(x, w, bias))
    m.act_mode = "fast"
    assert close(m(x), quant_linear_fast_ref(x, w, bias))
    m.set_kernel("ref")
    assert torch.equal(m(x), quant_linear_ref(x, w, bias)) and m.scale_tiles is None


def test_inputs_that_need_gradients_take_the_differentiable_reference():
    """A model with trainable embeddings (or LoRA on a quantized base) records the forward: the
    native op has no backward, so such inputs go through dequantize + F.linear."""
    w, bias = int4_weight(), torch.randn(12)
    m = QuantLinear(w, bias, act_mode="fast")
    x = torch.randn(40, 128, requires_grad=True)  # 40 rows: the GEMM path, which refused autograd
    y = m(x)
    y.square().sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    quant_linear_ref(x_ref, w, bias).square().sum().backward()
    torch.testing.assert_close(y, quant_linear_ref(x_ref, w, bias))
    torch.testing.assert_close(x.grad, x_ref.grad)
    with torch.no_grad():  # not recorded: the native op again, in its own mode (3 rows: the row kernels)
        assert close(m(x[:3]), quant_linear_fast_ref(x[:3].detach(), w, bias))


def test_formats_without_native_kernel_say_so():
    m = QuantLinear(lut8_weight())
    assert m.kernel == "ref" and "lut8 has no native kernel" in m.extra_repr()
    with pytest.raises(ValueError, match="no native kernel for this layer: lut8"):
        QuantLinear(lut8_weight(), kernel="native")
    with pytest.raises(ValueError, match="act_mode must be one of"):
        QuantLinear(int4_weight(), act_mode="int8")


def test_subclass_with_its_own_forward_keeps_it():
    q = QuantizedWeight("int8", torch.randint(-127, 128, (4, 64), dtype=torch.int8), torch.rand(4, 1).half(), 64, 64)
    m = W8A8Linear(q)
    assert m.kernel == "ref" and m.scale_tiles is None and "own forward" in m.kernel_note


def test_state_dict_holds_the_format_only_and_reloading_rebuilds_tiles():
    a, b = QuantLinear(int4_weight(seed=0)), QuantLinear(int4_weight(seed=1))
    assert set(a.state_dict()) == {"codes", "scales", "offsets"}  # no scale_tiles: derived
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.scale_tiles, a.scale_tiles)
    x = torch.randn(2, 128)
    assert torch.equal(b(x), a(x))


def test_set_quant_modes_reaches_every_layer():
    model = nn.Sequential(QuantLinear(int4_weight(128, 128)), nn.ReLU(), QuantLinear(int4_weight(8, 128, seed=1)))
    assert set_quant_modes(model, act_mode="fast") == 2
    assert all(m.act_mode == "fast" for m in model if isinstance(m, QuantLinear))
    set_quant_modes(model, kernel="ref")
    assert all(m.kernel == "ref" for m in model if isinstance(m, QuantLinear))


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = QuantLinear(int4_weight(64, 128, seed=2), torch.randn(64))
        self.down = QuantLinear(QuantizedWeight("int8", torch.randint(-127, 128, (128, 64), dtype=torch.int8),
                                                torch.rand(128, 2).half() * 0.01, 32, 64))

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.up(x))) + x


@pytest.mark.parametrize("act_mode", ["exact", "fast"])
def test_compile_keeps_the_op_in_one_graph(act_mode):
    model = TwoLayers().eval()
    set_quant_modes(model, act_mode=act_mode)
    x = torch.randn(1, 5, 128)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))


def test_inductor_runs_the_op():
    model = TwoLayers().eval()
    set_quant_modes(model, act_mode="fast")
    x = torch.randn(1, 1, 128)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        # inductor may fuse the silu and the residual differently: float32 rounding only
        assert close(compiled(x), model(x), rel=1e-5)
