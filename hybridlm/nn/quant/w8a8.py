"""`W8A8Linear`: int8 weights and int8 activations, the matmul in integers (SmoothQuant's W8A8).

Weights are int8 per output channel (the `int8` format of formats.py with group_size = in, so
one float16 scale per row). Activations are quantized on the way in, symmetric on [-127, 127]:

    dynamic  s_x[t] = max_j |x[t, j]| / 127     one scale per token, computed every forward
    static   s_x    = calibrated max |x| / 127   one scale per tensor, fixed (values beyond saturate)

Then y[t, o] = s_x[t] s_w[o] sum_j q_x[t, j] q_w[o, j] + b[o]: the sum is exact in int32
(|q| <= 127 and in < 133,000 inputs cannot overflow), so the only rounding is the two
quantizations and the final float scale.

Optionally x is multiplied by a per-input-channel `input_scale` first: SmoothQuant's 1/s for a
layer whose producer cannot absorb it (compress/smoothquant.py folds it wherever it can).

Two implementations, pinned by tests/nn/quant/test_w8a8.py:
  - "int": torch._int_mm (int8 x int8 -> int32). It runs on the CPU in torch 2.13 and is exact,
    but is not vectorised there: measured on an AMD EPYC (Zen 3, 2 threads), a 576 x 1536 layer
    took 0.3 ms for one token (2x float32's F.linear) and 23 ms for 64 tokens (20x). The speed of
    W8A8 on this CPU is a kernel question (kernels/); this module is about its numerics.
  - "ref": the fake-quant twin in float32, dequantized activations @ dequantized weights.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .formats import QuantFormatError, QuantizedWeight, dequantize_ref
from .linear import QuantLinear

ACT_MODES = ("dynamic", "static")
W8A8_IMPLS = ("int", "ref")
QMAX = 127  # symmetric: -128 is never used, so -x quantizes to -q exactly


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., in) float -> codes int8 (..., in), scales float32 (..., 1) with x ~ codes * scales.
    An all-zero token gets scale 1 (codes 0)."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(xf / scale).clamp(-QMAX, QMAX).to(torch.int8), scale


def quantize_per_tensor(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (..., in) float -> int8 codes against one fixed float32 scale (saturating)."""
    return torch.round(x.float() / scale).clamp(-QMAX, QMAX).to(torch.int8)


def quantize_activations(x: torch.Tensor, act: str, act_scale: torch.Tensor | None,
                         input_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 codes (..., in) and float32 scales ((..., 1) dynamic, () static) W8A8 feeds the matmul."""
    if input_scale is not None:
        x = x.float() * input_scale
    if act == "dynamic":
        return quantize_per_token(x)
    return quantize_per_tensor(x, act_scale), act_scale


def w8a8_linear_ref(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None, act: str = "dynamic",
                    act_scale: torch.Tensor | None = None, input_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Fake-quant twin in float32: F.linear(dequantized int8 x, dequantized int8 W). x (..., in) -> (..., out)."""
    q, s = quantize_activations(x, act, act_scale, input_scale)
    y = F.linear(q.float() * s, dequantize_ref(weight), None if bias is None else bias.float())
    return y.to(x.dtype)


def w8a8_linear_int(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None, act: str = "dynamic",
                    act_scale: torch.Tensor | None = None, input_scale: torch.Tensor | None = None) -> torch.Tensor:
    """int8 x int8 -> int32 through torch._int_mm, then the float scales. x (..., in) -> (..., out)."""
    q, s = quantize_activations(x, act, act_scale, input_scale)
    lead = q.shape[:-1]
    acc = torch._int_mm(q.reshape(-1, q.shape[-1]), weight.codes.t())  # (tokens, out) int32
    s_tok = s.reshape(-1, 1) if act == "dynamic" else s
    y = acc.float() * s_tok * weight.scales.float().reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.reshape(*lead, -1).to(x.dtype)


W8A8_FORWARDS = {"int": w8a8_linear_int, "ref": w8a8_linear_ref}


class W8A8Linear(QuantLinear):
    """A QuantLinear (int8 per-channel weight) whose input is also quantized to int8.

    Buffers, all saved with the state dict: codes, scales, bias (QuantLinear's); act_scale:
    float32 () for static activations, None for dynamic; input_scale: float32 (in,) multiplied
    into x before quantizing, or None. `act` and `impl` are plain attributes (`quant_spec`).
    """

    def __init__(self, weight: QuantizedWeight, bias: torch.Tensor | None = None, act: str = "dynamic",
                 act_scale: torch.Tensor | None = None, input_scale: torch.Tensor | None = None, impl: str = "int"):
        if weight.fmt != "int8" or weight.group_size != weight.in_features:
            raise QuantFormatError(f"W8A8 needs int8 weights with one scale per output row, not {weight.fmt} "
                                   f"with group size {weight.group_size} of {weight.in_features}")
        if act not in ACT_MODES:
            raise ValueError(f"activation quantization must be one of {ACT_MODES}, not {act!r}")
        if (act == "static") != (act_scale is not None):
            raise ValueError("static activation quantization needs act_scale; dynamic takes none")
        if input_scale is not None and tuple(input_scale.shape) != (weight.in_features,):
            raise ValueError(f"input_scale must have shape ({weight.in_features},), got {tuple(input_scale.shape)}")
        super().__init__(weight, bias)
        self.act = act
        self.impl = impl
        self.register_buffer("act_scale", None if act_scale is None else act_scale.detach().float().reshape(()))
        self.register_buffer("input_scale", None if input_scale is None else input_scale.detach().float())

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in W8A8_IMPLS:
            raise ValueError(f"W8A8 impl must be one of {W8A8_IMPLS}, not {value!r}")
        self._impl = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return W8A8_FORWARDS[self._impl](x, self.weight_q, self.bias, self.act, self.act_scale, self.input_scale)

    def quant_spec(self) -> dict:
        """What a saved model needs besides the tensors to rebuild this module."""
        return {"kind": "w8a8", "act": self.act}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", act={self.act}, smoothed_input={self.input_scale is not None}"


def set_w8a8_impl(model: torch.nn.Module, impl: str) -> int:
    """Switch every W8A8Linear of `model` to `impl` ("int" or "ref"); returns how many."""
    count = 0
    for m in model.modules():
        if isinstance(m, W8A8Linear):
            m.impl = impl
            count += 1
    return count
