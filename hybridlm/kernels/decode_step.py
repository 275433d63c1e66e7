"""The native one-token decode step (decode_step.cpp): which models it runs, and its plan.

`build_plan(model)` hands a Decoder's weights to `torch.classes.hybridlm.DecodePlan` once; each
`plan.step(token, pos, k_caches, v_caches)` then runs a whole token (every block, the final norm
and the LM head) in one call, writing K/V into the model's own cache tensors. The eager Decoder on
the same cache is its reference (tests pin the logits together).

It covers what the quantized Llama family needs at batch 1 and nothing more: pre-norm RMSNorm
blocks of attention (RoPE, MHA/GQA/MQA, optional q/k/v biases, no QK-norm, no window, no ALiBi)
and SwiGLU MLPs, every linear a native `QuantLinear`, a float32 embedding. `unsupported_reason`
names the first thing a model has outside that; callers then keep the eager path.
"""

from __future__ import annotations

import torch

from ..models.decoder import Decoder
from ..nn.attention import Attention
from ..nn.mlp import MLP
from ..nn.norms import RMSNorm
from ..nn.quant.linear import QuantLinear
from . import qmatmul


def unsupported_reason(model: Decoder) -> str | None:
    """Why the native step cannot run `model` (None if it can)."""
    if not isinstance(model, Decoder):
        return f"{type(model).__name__} is not a hybridlm Decoder"
    cfg = model.config
    checks = (
        (model.device.type != "cpu", "the model is not on the CPU"),
        (model.training, "the model is in training mode"),
        (cfg.position != "rope", f"positions are {cfg.position}, not RoPE"),
        (cfg.norm != "rmsnorm" or cfg.norm_position != "pre", "blocks are not pre-norm RMSNorm"),
        (cfg.sliding_window is not None, "attention has a sliding window"),
        (cfg.qk_norm, "attention normalises q and k"),
        (cfg.mlp != "swiglu", f"the MLP is {cfg.mlp}, not SwiGLU"),
        (any(kind not in ("attention", "mlp") for kind in cfg.blocks), "it has blocks other than attention and MLP"),
        (model.embed.weight.dtype != torch.float32, "the embedding is not float32"),
    )
    for failed, reason in checks:
        if failed:
            return reason
    for block in model.blocks:
        if not isinstance(block.norm, RMSNorm) or block.norm.weight.dtype != torch.float32:
            return "a block norm is not a float32 RMSNorm"
        mixer = block.mixer
        linears = (mixer.wqkv, mixer.wo) if isinstance(mixer, Attention) else (mixer.w_in, mixer.w_out)
        for linear in linears:
            if not isinstance(linear, QuantLinear) or linear.kernel != "native":
                return "not every linear is a quantized layer with a native kernel"
    head = model.lm_head
    if not isinstance(head, QuantLinear) or head.kernel != "native":
        return "the LM head is not a quantized layer with a native kernel"
    if not isinstance(model.final_norm, RMSNorm):
        return "the final norm is not an RMSNorm"
    return None


def available(model: Decoder) -> bool:
    """Whether `build_plan(model)` can run here (the library built, the model covered)."""
    return unsupported_reason(model) is None and qmatmul.available()


def build_plan(model: Decoder):
    """The DecodePlan of `model` (eval mode, covered by the native step: see unsupported_reason).
    It references the model's tensors: rebuild it after changing or moving the weights."""
    reason = unsupported_reason(model)
    if reason is not None:
        raise ValueError(f"the native decode step cannot run this model: {reason}")
    qmatmul.load()
    cfg = model.config
    plan = torch.classes.hybridlm.DecodePlan(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                                             float(cfg.norm_eps), model.rope_inv_freq.float().contiguous())

    def add(linear: QuantLinear) -> int:
        return plan.add_linear(linear.codes, linear.scales, linear.offsets, linear.lut, linear.bias,
                               linear.scale_tiles, linear.fmt, linear.group_size, linear.act_mode)

    for block in model.blocks:
        mixer = block.mixer
        if isinstance(mixer, Attention):
            plan.add_attention(block.norm.weight.detach(), add(mixer.wqkv), add(mixer.wo))
        elif isinstance(mixer, MLP):
            plan.add_mlp(block.norm.weight.detach(), add(mixer.w_in), add(mixer.w_out))
    plan.set_head(model.embed.weight.detach().contiguous(), model.final_norm.weight.detach(), add(model.lm_head))
    return plan
