"""How much each weight, MLP channel, attention head and layer matters, from one of three sources:

- weight:     magnitude. Elements |W|; a channel or head by the product of the norms of the weights
              that carry it in and out (zero either and it contributes nothing).
- activation: what calibration data puts through it. Elements |W_ij| * ||X_j||_2 (Wanda, Sun et al.
              2023: the input column's norm over all tokens); a channel or head by the norm of its
              activation over all tokens times the norm of the output weights it feeds (the same
              |W| * ||X|| at the granularity of a whole input group of the output projection).
              Layers by block influence, 1 - mean cos(h_in, h_out) over tokens (ShortGPT, Men et al.
              2024; Gromov et al. 2024): a layer that barely turns the hidden state is cheap to drop.
- gradient:   first-order Taylor, |w * dL/dw| with the gradient of the mean next-token loss over the
              calibration tokens (Molchanov et al. 2019); a structure sums it over its weights.

Every function only reads the model (gradients are cleared again afterwards).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..calibration import Calibration
from .structured import attention_blocks, layer_units, mlp_blocks


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The linears unstructured pruning masks: every nn.Linear inside the blocks but MoE routers
    (the embedding and LM head stay dense, as in SparseGPT and Wanda)."""
    return {name: m for name, m in model.named_modules()
            if type(m) is nn.Linear and name.startswith("blocks.") and not name.endswith("router")}


def _forward_all(model: nn.Module, calib: Calibration) -> None:
    for batch in calib.batches():
        model(batch.to(model.device))


@torch.no_grad()
def input_sq_norms(model: nn.Module, names: list[str], calib: Calibration) -> dict[str, torch.Tensor]:
    """Per linear: sum over all calibration tokens of x_j^2 for each input column j, float32 (in,)."""
    sums = {name: torch.zeros(model.get_submodule(name).in_features, device=model.device) for name in names}

    def hook(name):
        def accumulate(module, args):
            sums[name] += args[0].detach().float().pow(2).reshape(-1, args[0].shape[-1]).sum(0)
        return accumulate

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        _forward_all(model, calib)
    finally:
        for h in handles:
            h.remove()
    return sums


def gradients(model: nn.Module, calib: Calibration) -> dict[str, torch.Tensor]:
    """dL/dw for every parameter (by name), L the mean next-token cross-entropy over all
    calibration tokens. The model's .grad fields are left as they were found (None)."""
    params = dict(model.named_parameters())
    total = calib.ids.shape[0] * (calib.ids.shape[1] - 1)
    with torch.enable_grad():
        for p in params.values():
            p.grad = None
        for batch in calib.batches():
            batch = batch.to(model.device)
            logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="sum") / total
            loss.backward()
    grads = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}
    for p in params.values():
        p.grad = None
    return grads


def _taylor(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (w.detach().float() * g.float()).abs()


def weight_scores(model: nn.Module, names: list[str], importance: str, calib: Calibration | None
                  ) -> dict[str, torch.Tensor]:
    """Per linear: one score per weight element, float32 (out, in); low = prune first."""
    if importance == "weight":
        return {n: model.get_submodule(n).weight.detach().float().abs() for n in names}
    if importance == "activation":
        norms = input_sq_norms(model, names, calib)
        return {n: model.get_submodule(n).weight.detach().float().abs() * norms[n].sqrt()[None] for n in names}
    grads = gradients(model, calib)
    return {n: _taylor(model.get_submodule(n).weight, grads[f"{n}.weight"]) for n in names}


def _row_norms(w: torch.Tensor) -> torch.Tensor:
    return w.detach().float().norm(dim=1)


def mlp_channel_scores(model: nn.Module, importance: str, calib: Calibration | None) -> dict[int, torch.Tensor]:
    """Per MLP block index: one score per hidden channel, float32 (d_ff,)."""
    blocks = mlp_blocks(model)
    grads = gradients(model, calib) if importance == "gradient" else None
    norms = input_sq_norms(model, [f"blocks.{i}.mixer.w_out" for i in blocks], calib) if importance == "activation" else None
    scores = {}
    for i, mlp in blocks.items():
        d_ff, w_in, w_out = mlp.d_ff, mlp.w_in.weight, mlp.w_out.weight
        out_norm = w_out.detach().float().norm(dim=0)  # (d_ff,): the column that carries channel j out
        if importance == "weight":
            rows = _row_norms(w_in).view(-1, d_ff)  # (1 or 2, d_ff): [gate; up] rows for a GLU
            scores[i] = rows.prod(0) * out_norm
        elif importance == "activation":
            scores[i] = norms[f"blocks.{i}.mixer.w_out"].sqrt() * out_norm
        else:
            g_in, g_out = grads[f"blocks.{i}.mixer.w_in.weight"], grads[f"blocks.{i}.mixer.w_out.weight"]
            scores[i] = _taylor(w_in, g_in).sum(1).view(-1, d_ff).sum(0) + _taylor(w_out, g_out).sum(0)
    return scores


def head_scores(model: nn.Module, importance: str, calib: Calibration | None
                ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per attention block index: (scores of the query heads (H,), extra scores of the KV heads
    (H_kv,)), float32. The KV part is nonzero only for gradients (the Taylor sum over their k and v
    rows); a whole KV group scores its query heads' sum plus its own KV part."""
    blocks = attention_blocks(model)
    grads = gradients(model, calib) if importance == "gradient" else None
    names = [f"blocks.{i}.mixer.wo" for i in blocks]
    norms = input_sq_norms(model, names, calib) if importance == "activation" else None
    scores = {}
    for i, attn in blocks.items():
        h, h_kv, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
        wq = attn.wqkv.weight[:h * d]
        wo_heads = attn.wo.weight.detach().float().view(-1, h, d)  # (d_model, H, D): the columns of each head
        kv = torch.zeros(h_kv)
        if importance == "weight":
            q = wq.detach().float().view(h, -1).norm(dim=1) * wo_heads.pow(2).sum((0, 2)).sqrt()
        elif importance == "activation":
            q = norms[f"blocks.{i}.mixer.wo"].view(h, d).sum(1).sqrt() * wo_heads.pow(2).sum((0, 2)).sqrt()
        else:
            g_qkv, g_o = grads[f"blocks.{i}.mixer.wqkv.weight"], grads[f"blocks.{i}.mixer.wo.weight"]
            taylor_qkv = _taylor(attn.wqkv.weight, g_qkv).sum(1)  # per row
            q = taylor_qkv[:h * d].view(h, d).sum(1) + _taylor(attn.wo.weight, g_o).view(-1, h, d).sum((0, 2))
            kv = (taylor_qkv[h * d:(h + h_kv) * d].view(h_kv, d).sum(1)
                  + taylor_qkv[(h + h_kv) * d:].view(h_kv, d).sum(1))
            if attn.wqkv.bias is not None:
                gb = grads[f"blocks.{i}.mixer.wqkv.bias"]
                tb = _taylor(attn.wqkv.bias, gb)
                q = q + tb[:h * d].view(h, d).sum(1)
                kv = kv + tb[h * d:(h + h_kv) * d].view(h_kv, d).sum(1) + tb[(h + h_kv) * d:].view(h_kv, d).sum(1)
        scores[i] = (q, kv)
    return scores


@torch.no_grad()
def block_influence(model: nn.Module, calib: Calibration) -> torch.Tensor:
    """Per layer unit (layer_units): 1 - mean over tokens of cos(hidden state in, hidden state out),
    float32 (units,). High = the layer changes the residual stream a lot."""
    units = layer_units(model.config)
    sums = torch.zeros(len(units), dtype=torch.float64)
    count = 0
    held: dict[int, torch.Tensor] = {}
    handles = []
    for u, blocks in enumerate(units):
        def take_in(module, args, u=u):
            held[u] = args[0].detach()

        def take_out(module, args, output, u=u):
            cos = F.cosine_similarity(held.pop(u).float(), output.detach().float(), dim=-1)  # (B, T)
            sums[u] += cos.double().sum().item()

        handles.append(model.blocks[blocks[0]].register_forward_pre_hook(take_in))
        handles.append(model.blocks[blocks[-1]].register_forward_hook(take_out))
    try:
        for batch in calib.batches():
            model(batch.to(model.device))
            count += batch.numel()
    finally:
        for h in handles:
            h.remove()
    return (1.0 - sums / count).float()


def layer_scores(model: nn.Module, importance: str, calib: Calibration) -> torch.Tensor:
    """Per layer unit: its importance, float32 (units,); activation = block influence, gradient =
    the Taylor sum over every weight in the unit."""
    if importance == "activation":
        return block_influence(model, calib)
    if importance != "gradient":
        raise ValueError(f"layers are ranked by activation or gradient, not {importance!r}")
    grads = gradients(model, calib)
    units = layer_units(model.config)
    scores = torch.zeros(len(units))
    for u, blocks in enumerate(units):
        for b in blocks:
            for name, p in model.blocks[b].named_parameters():
                scores[u] += _taylor(p, grads[f"blocks.{b}.{name}"]).sum()
    return scores

