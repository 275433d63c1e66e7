"""Structured pruning that physically shrinks a model: MLP hidden channels, attention heads and
whole layers are removed, and a new, smaller Decoder of a valid `ModelConfig` holds what is left.

The config has one d_ff, one n_heads and one n_kv_heads for every layer, so every MLP block keeps
the same number of channels and every attention block the same heads per KV group. Each function
takes the indices to KEEP (in increasing order) and copies exactly those rows and columns:

    MLP channel j      rows j of w_in's gate and up bands (and their biases), column j of w_out
    query head h       rows h*D..(h+1)*D of wqkv's q band, the same columns of wo
    KV head g          its rows of the k and v bands; query head h reads KV head h // (H / H_kv),
                       so keeping the same number of query heads in every kept group keeps the map
    layer              its blocks (attention + MLP for a dense stack), renumbered

Removing is exactly zeroing what carried the removed structure out: a channel whose w_out column
is zero, a head whose wo columns are zero, a layer skipped (tests/compress/test_prune_structured.py).
"""

from __future__ import annotations

import torch
from torch import nn

from ...config import ModelConfig
from ...models.decoder import Decoder
from ...nn.mlp import is_glu
from .config import PruneError


def mlp_blocks(model: nn.Module) -> dict[int, nn.Module]:
    """Block index -> MLP mixer, for every dense MLP block."""
    return {i: b.mixer for i, b in enumerate(model.blocks) if b.kind == "mlp"}


def attention_blocks(model: nn.Module) -> dict[int, nn.Module]:
    """Block index -> attention mixer."""
    return {i: b.mixer for i, b in enumerate(model.blocks) if b.kind == "attention"}


def layer_units(cfg: ModelConfig) -> list[tuple[int, ...]]:
    """What one "layer" is: a dense or MoE stack (empty layer_pattern) is n_layers pairs of blocks
    (attention, then MLP or MoE); an explicit pattern (hybrids) prunes single blocks."""
    if not cfg.layer_pattern:
        return [(2 * i, 2 * i + 1) for i in range(len(cfg.blocks) // 2)]
    return [(i,) for i in range(len(cfg.blocks))]


def _rebuild(model: Decoder, cfg: ModelConfig, state: dict[str, torch.Tensor]) -> Decoder:
    """A new Decoder of `cfg` holding `state`, on the old model's device and dtype and in its mode."""
    new = Decoder(cfg).to(device=model.device, dtype=model.dtype)
    new.load_state_dict(state)
    return new.train(model.training)


def _state(model: Decoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_count(keep: dict[int, torch.Tensor], what: str) -> int:
    counts = {len(k) for k in keep.values()}
    if len(counts) != 1:
        raise PruneError(f"every block must keep the same number of {what} (the config has one size); got {sorted(counts)}")
    n = counts.pop()
    if n == 0:
        raise PruneError(f"pruning would leave no {what}")
    return n


def remove_mlp_channels(model: Decoder, keep: dict[int, torch.Tensor]) -> Decoder:
    """A new model whose MLP block i keeps the hidden channels keep[i] (int64, increasing); every
    MLP block must be listed and keep as many as the others."""
    blocks = mlp_blocks(model)
    if not blocks:
        raise PruneError("the model has no dense MLP blocks to prune channels from")
    if set(keep) != set(blocks):
        raise PruneError(f"channels to keep are given for blocks {sorted(keep)}, the MLP blocks are {sorted(blocks)}")
    d_ff = _same_count(keep, "MLP channels")
    state = _state(model)
    for i, mlp in blocks.items():
        k = keep[i].to(torch.long)
        rows = torch.cat([k, k + mlp.d_ff]) if is_glu(mlp.kind) else k  # [gate; up] bands
        p = f"blocks.{i}.mixer"
        state[f"{p}.w_in.weight"] = state[f"{p}.w_in.weight"][rows]
        if f"{p}.w_in.bias" in state:
            state[f"{p}.w_in.bias"] = state[f"{p}.w_in.bias"][rows]
        state[f"{p}.w_out.weight"] = state[f"{p}.w_out.weight"][:, k]
    return _rebuild(model, model.config.replace(d_ff=d_ff), state)


def _check_groups(keep_q: torch.Tensor, keep_kv: torch.Tensor, rep: int, block: int) -> int:
    """Kept query heads must sit in kept KV groups, the same number in each. -> the new ratio."""
    groups = keep_q // rep
    if not set(groups.tolist()) <= set(keep_kv.tolist()):
        raise PruneError(f"block {block} keeps query heads of a removed KV group")
    per_group = torch.bincount(groups, minlength=int(keep_kv.max()) + 1)[keep_kv]
    if len(set(per_group.tolist())) != 1 or per_group[0] == 0:
        raise PruneError(f"block {block} would keep {per_group.tolist()} query heads in its KV groups; "
                         "GQA needs the same number in every group")
    return int(per_group[0])


def remove_heads(model: Decoder, keep_q: dict[int, torch.Tensor], keep_kv: dict[int, torch.Tensor]) -> Decoder:
    """A new model whose attention block i keeps query heads keep_q[i] and KV heads keep_kv[i]
    (int64, increasing). Every block keeps the same counts; kept queries stay in kept groups."""
    cfg = model.config
    blocks = attention_blocks(model)
    if not blocks:
        raise PruneError("the model has no attention blocks to prune heads from")
    if cfg.position == "alibi":
        raise PruneError("ALiBi's slopes depend on the number of heads: its heads cannot be pruned")
    if set(keep_q) != set(blocks) or set(keep_kv) != set(blocks):
        raise PruneError(f"heads to keep are given for blocks {sorted(keep_q)}, the attention blocks are {sorted(blocks)}")
    n_q, n_kv = _same_count(keep_q, "query heads"), _same_count(keep_kv, "KV heads")
    rep = cfg.n_heads // cfg.n_kv_heads
    state = _state(model)
    d = cfg.head_dim
    for i in blocks:
        kq, kkv = keep_q[i].to(torch.long), keep_kv[i].to(torch.long)
        _check_groups(kq, kkv, rep, i)
        q_rows = (kq[:, None] * d + torch.arange(d)).reshape(-1)
        kv_rows = (kkv[:, None] * d + torch.arange(d)).reshape(-1)
        q_end, kv_w = cfg.n_heads * d, cfg.n_kv_heads * d
        rows = torch.cat([q_rows, q_end + kv_rows, q_end + kv_w + kv_rows])  # [q; k; v] bands
        p = f"blocks.{i}.mixer"
        state[f"{p}.wqkv.weight"] = state[f"{p}.wqkv.weight"][rows]
        if f"{p}.wqkv.bias" in state:
            state[f"{p}.wqkv.bias"] = state[f"{p}.wqkv.bias"][rows]
        state[f"{p}.wo.weight"] = state[f"{p}.wo.weight"][:, q_rows]
    return _rebuild(model, cfg.replace(n_heads=n_q, n_kv_heads=n_kv, head_dim=d), state)


def remove_layers(model: Decoder, keep: list[int]) -> Decoder:
    """A new model with only the layer units (layer_units) listed in `keep`, in their order."""
    cfg = model.config
    units = layer_units(cfg)
    keep = sorted(set(keep))
    if not keep:
        raise PruneError("pruning would leave no layers")
    if keep[0] < 0 or keep[-1] >= len(units):
        raise PruneError(f"layers to keep {keep} are outside the model's {len(units)}")
    kept_blocks = [b for u in keep for b in units[u]]
    renumber = {old: new for new, old in enumerate(kept_blocks)}
    state = {}
    for key, value in _state(model).items():
        if not key.startswith("blocks."):
            state[key] = value
            continue
        _, index, rest = key.split(".", 2)
        if int(index) in renumber:
            state[f"blocks.{renumber[int(index)]}.{rest}"] = value
    if cfg.layer_pattern:
        new_cfg = cfg.replace(layer_pattern="".join(cfg.pattern[b] for b in kept_blocks))
    else:  # n_decoder_layers defaults to n_layers (it means nothing to a decoder-only model): keep it so
        follow = {"n_decoder_layers": len(keep)} if getattr(cfg, "n_decoder_layers", None) == cfg.n_layers else {}
        new_cfg = cfg.replace(n_layers=len(keep), **follow)
    return _rebuild(model, new_cfg, state)


# -- choosing what to keep from importance scores ------------------------------------------------------
def keep_highest(scores: torch.Tensor, n_remove: int) -> torch.Tensor:
    """Indices (increasing) of all but the n_remove lowest scores; ties go to the lower index."""
    order = torch.sort(scores.float(), stable=True).indices  # ascending: the first n_remove go
    return torch.sort(order[n_remove:]).values


def keep_heads(q_scores: torch.Tensor, kv_scores: torch.Tensor, n_kv: int, n_remove: int, unit: str
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(query heads, KV heads) to keep in one block. unit "query": n_remove query heads from every
    KV group, the lowest in that group; "group": the n_remove KV groups scoring lowest (their query
    heads' scores summed with their own), with all their query heads."""
    h = q_scores.numel()
    rep = h // n_kv
    if unit == "group":
        group = q_scores.view(n_kv, rep).sum(1) + kv_scores
        kept_kv = keep_highest(group, n_remove)
        return (kept_kv[:, None] * rep + torch.arange(rep)).reshape(-1), kept_kv
    kept = [g * rep + keep_highest(q_scores[g * rep:(g + 1) * rep], n_remove) for g in range(n_kv)]
    return torch.cat(kept), torch.arange(n_kv)
