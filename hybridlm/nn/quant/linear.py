"""`QuantLinear`: a linear layer whose weight is stored quantized (formats.py) and the swap that
puts it in place of an `nn.Linear`. The forward is the only thing that changes: the model around
it is untouched, as compression rewrites modules and leaves the forward alone.

Two implementations, chosen per module (`kernel`):
- "native": the C++ op of kernels/qmatmul (AVX-512 VNNI, AVX2 or portable, picked at run time),
  which reads the codes as they are stored and never materialises the float weight;
- "ref": `quant_linear_ref`, dequantize the whole weight and call `F.linear`: obviously right, and
  the twin every native kernel is pinned to.
"auto" (the default) takes native where it exists for the format and the library builds here,
and says why not in `extra_repr` otherwise (lut8 has no native kernel; a failed build prints one
warning line per process).

Two activation modes (`act_mode`), both real:
- "exact": float32 activations, weights dequantized in registers: the result is the dequantized
  float32 model's up to summation order (so parity with float checkpoints holds).
- "fast": activations quantized per block of 32 inputs to int8 with a float scale (llama.cpp's
  Q8), integer dot products; `quant_linear_fast_ref` is its reference. lut4 runs exact in both.
Many rows at once (prefill, from `kernels.qmatmul.gemm_rows()` rows) run a dequantized-tile float
GEMM in both modes: there arithmetic dominates, and exact costs nothing more.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ...kernels import triton_support
from .formats import QuantizedWeight

KERNELS = ("auto", "native", "ref")
ACT_MODES = ("exact", "fast")
ACT_BLOCK = 32  # inputs per activation scale in fast mode


class QuantLinear(nn.Module):
    """y = x W^T + b with W held as a `QuantizedWeight` (codes, scales, offsets, lut as buffers).

    kernel: "auto", "native" (an error where it cannot run) or "ref"; see the module doc. After
    construction `self.kernel` is "native" or "ref" and `self.kernel_note` says why ref was taken.
    act_mode: "exact" or "fast". Neither is saved with the state dict: they are how to run it.
    """

    def __init__(self, weight: QuantizedWeight, bias: torch.Tensor | None = None, kernel: str = "auto",
                 act_mode: str = "exact"):
        super().__init__()
        self.fmt, self.group_size = weight.fmt, weight.group_size
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.register_buffer("codes", weight.codes)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("offsets", weight.offsets)
        self.register_buffer("lut", weight.lut)
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        # the scales regrouped for the native kernel's tiles of 4 rows; derived, so not saved
        self.register_buffer("scale_tiles", None, persistent=False)
        self.act_mode = act_mode
        self.set_kernel(kernel)

    @property
    def act_mode(self) -> str:
        return self._act_mode

    @act_mode.setter
    def act_mode(self, value: str) -> None:
        if value not in ACT_MODES:
            raise ValueError(f"act_mode must be one of {ACT_MODES}, not {value!r}")
        self._act_mode = value

    @property
    def weight_q(self) -> QuantizedWeight:
        """The stored weight as a QuantizedWeight (views of the buffers, not copies)."""
        return QuantizedWeight(self.fmt, self.codes, self.scales, self.group_size, self.in_features,
                               self.offsets, self.lut)

    def set_kernel(self, kernel: str) -> None:
        """Choose the implementation ("auto", "native" or "ref"); builds the scale tiles for native."""
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, not {kernel!r}")
        reason = None if kernel == "ref" else self._native_unavailable()
        if kernel == "native" and reason:
            raise ValueError(f"no native kernel for this layer: {reason}")
        self.requested = kernel
        self.kernel, self.kernel_note = ("ref", reason or "") if kernel == "ref" or reason else ("native", "")
        if self.kernel == "native":
            from ...kernels import qmatmul

            self.scale_tiles = qmatmul.scale_tiles(self.scales, self.offsets)
        else:
            self.scale_tiles = None

    def _native_unavailable(self) -> str | None:
        """Why the native op cannot run this layer, or None."""
        if type(self).forward is not QuantLinear.forward:
            return f"{type(self).__name__} has its own forward"
        if self.codes.device.type != "cpu":
            return "the native kernels are for CPU tensors"
        from ...kernels import qmatmul

        reason = qmatmul.unsupported_reason(self.fmt, self.group_size, self.scales, self.offsets)
        if reason is None and not qmatmul.available():
            reason = "the native library could not be built here"
        return reason

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        if self.kernel == "native":  # the tiles are derived from the scales just loaded
            self.set_kernel("native")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the native op has no backward: a forward autograd records (gradients through a quantized
        # model, as QLoRA needs) takes the differentiable reference, exact in both modes
        recorded = x.requires_grad and torch.is_grad_enabled()
        if self.kernel == "native" and x.device.type == "cpu" and not recorded:
            return torch.ops.hybridlm.qlinear(x, self.codes, self.scales, self.offsets, self.lut, self.bias,
                                              self.scale_tiles, self.fmt, self.group_size, self._act_mode)
        if self._triton_here(x) and not recorded:  # CUDA: dequantize inside the Triton kernel
            from ...kernels.qmatmul_triton import qlinear_triton

            return qlinear_triton(x, self.codes, self.scales, self.offsets, self.bias, self.fmt, self.group_size)
        return quant_linear_ref(x, self.weight_q, self.bias)

    def _triton_here(self, x: torch.Tensor) -> bool:
        """CUDA weights and activations, kernel not forced to "ref", a format the Triton kernel reads
        (int4, int8; exact mode's arithmetic: activations are not quantized on the GPU path)."""
        if self.requested == "ref" or self.codes.device != x.device or not triton_support.use_triton(x):
            return False
        from ...kernels.qmatmul_triton import unsupported_reason

        return unsupported_reason(self.fmt, self.group_size, self.scales, self.offsets) is None

    def extra_repr(self) -> str:
        if self.kernel == "native":
            from ...kernels import qmatmul

            how = f"kernel=native ({qmatmul.isa()}), act_mode={self._act_mode}"
        else:
            how = "kernel=ref" + (f" ({self.kernel_note})" if self.kernel_note else "")
        return (f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}, "
                f"group_size={self.group_size}, bias={self.bias is not None}, {how}")


def quant_linear_ref(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """Dequantize, then F.linear, in x's dtype. x (..., in) -> (..., out)."""
    w = weight.dequantize(x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def quantize_activations_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast mode's activation quantization (llama.cpp's Q8 blocks): per block of 32 inputs
    d = max|x| / 127, q = round-half-even(x * (1 / d)) (0 where d = 0), in float32.
    x (..., in) -> codes as float (..., in // 32, 32), scales (..., in // 32, 1)."""
    blocks = x.float().reshape(*x.shape[:-1], -1, ACT_BLOCK)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d != 0, 1 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
    return torch.round(blocks * inv), d


def quant_linear_fast_ref(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """Fast mode written out: x replaced by its Q8 blocks (codes * scales), then the dequantized
    weight, in float64 so the only rounding left is the activations'. x (..., in) -> (..., out) in x's dtype."""
    codes, d = quantize_activations_ref(x)
    x_q = (codes.double() * d.double()).reshape(x.shape)
    y = F.linear(x_q, weight.dequantize().double(), None if bias is None else bias.double())
    return y.to(x.dtype)


def set_quant_modes(model: nn.Module, kernel: str | None = None, act_mode: str | None = None) -> int:
    """Set the kernel and/or the activation mode of every QuantLinear in `model` (in place);
    returns how many there are."""
    count = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            if kernel is not None:
                m.set_kernel(kernel)
            if act_mode is not None:
                m.act_mode = act_mode
            count += 1
    return count


def quantize_linears(model: nn.Module, quantize: Callable[[str, nn.Linear], QuantizedWeight | None]) -> int:
    """Replace, in place, each `nn.Linear` for which `quantize(qualified name, linear)` returns a
    QuantizedWeight by a QuantLinear holding it (None keeps the layer). A weight shared by two
    modules (tied embeddings and LM head) is quantized only in the linear. Returns how many swapped."""
    count = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            full = f"{parent_name}.{name}" if parent_name else name
            q = quantize(full, child)
            if q is not None:
                setattr(parent, name, QuantLinear(q, child.bias))
                count += 1
    return count
