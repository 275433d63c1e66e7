"""Inference state: one slot per attention or Mamba block, plus the position bookkeeping they share.

Three storage strategies behind one slot interface (`update(k, v) -> what to attend over`):
  - static:  preallocated to `max_len` slots; with `full_view` every step attends over the whole
             buffer with empty slots masked, so shapes never change (what CUDA graphs need);
  - dynamic: grows by doubling, attends over the filled prefix;
  - window:  for sliding-window models, a ring of the last `window - 1` keys (memory O(window)).

All rows of a batch share the slot index; rows differ only in their positions (left padding),
which the cache tracks per slot as `key_pos` (-1 = padding or empty). Positions live here and
advance once per forward in `commit`, never inside a layer.

Mamba blocks get a `MambaSlot`: a constant-size conv state and SSM state, overwritten in place by
every forward. A recurrent state cannot be rewound: it summarises every token so far and no token
can be taken back out. So a hybrid cache supports `reorder` (beam search: rows move whole), and
reusing a prefix needs the state saved at exactly that prefix, or extending it exactly.

`rollback` (speculative decoding) forgets each row's last tokens: KV slots drop them with their
positions; Mamba slots return to a state they kept. Between `keep_states()` and the rollback every
Mamba forward keeps the state after each of its tokens (the mixer writes them), so going back is
an exact lookup, never a recomputation. That costs (tokens kept) x the state, so keep states only
around short forwards (a verification of k + 1 tokens), never a long prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .config import ModelConfig

CACHE_KINDS = ("dynamic", "static")


class CacheFullError(RuntimeError):
    """A static cache was asked to hold more tokens than it was built for."""


@dataclass
class CacheStep:
    """The plan for one forward of T new tokens over a cache.

    q_pos (B, T): positions of the new tokens, -1 for padding.
    k_pos (B, S): positions of every key the layers will attend over, -1 for padding or empty.
    trivial: every query may see every key up to itself with no padding and no window cut, so
        the attention mask can be dropped (T == 1) or replaced by is_causal (T == S).
    attend: None, or the attention function every layer uses this step instead of its own (the
        engine's paged cache: its slots return the block pools, and this reads each sequence's
        blocks). Same signature as `attention_sdpa`.
    out_index: None, or the token columns (K,) int64 whose logits the forward returns (the engine's
        flattened batch: the last token of each sequence), so the LM head skips the others.
    segments: None, or (B, T) int64 ids of the examples packed into each row (training on packed
        sequences, no cache): positions restart at each example and nothing crosses a boundary.
    """

    q_pos: torch.Tensor
    k_pos: torch.Tensor
    trivial: bool
    n_new: int
    attend: Callable | None = None
    out_index: torch.Tensor | None = None
    segments: torch.Tensor | None = None


class KVSlot:
    """K/V storage of one attention layer; `cache` holds the shared cursor (length, step).
    Stored in `cache.kv_store_dtype` (the model's dtype, or float16 under kv_dtype "float16"), and
    handed to attention in the model's dtype: a new token is rounded to the storage dtype before it
    is attended over, so a cached decode sees what a cached prefill of the same tokens sees."""

    def __init__(self, cache: "Cache", capacity: int):
        self.cache = cache
        shape = (cache.batch_size, cache.n_kv_heads, capacity, cache.head_dim)
        self.k = torch.zeros(shape, dtype=cache.kv_store_dtype, device=cache.device)
        self.v = torch.zeros(shape, dtype=cache.kv_store_dtype, device=cache.device)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.dtype == self.cache.dtype else x.to(self.cache.dtype)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, H_kv, T, D); return the keys and values to attend over (B, H_kv, S, D)."""
        if self.cache.full_view:
            # indices as a tensor, not the int cursor: a compiled step is then one graph at every position
            self.k.index_copy_(2, self.cache.write_index, k.to(self.k.dtype))
            self.v.index_copy_(2, self.cache.write_index, v.to(self.v.dtype))
            return self._out(self.k), self._out(self.v)
        start, t = self.cache.length, k.shape[2]
        if self.cache.window_ring:
            return self._update_ring(k, v, start)
        if start + t > self.k.shape[2]:
            self._grow(start + t)
        self.k[:, :, start:start + t] = k
        self.v[:, :, start:start + t] = v
        return self._out(self.k[:, :, :start + t]), self._out(self.v[:, :, :start + t])

    def _update_ring(self, k, v, start):
        capacity = self.k.shape[2]
        k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        k_all, v_all = self._out(torch.cat((self.k, k), dim=2)), self._out(torch.cat((self.v, v), dim=2))
        if capacity:
            keep = min(k.shape[2], capacity)
            idx = self.cache.ring_index(start, k.shape[2])
            self.k.index_copy_(2, idx, k[:, :, -keep:])
            self.v.index_copy_(2, idx, v[:, :, -keep:])
        return k_all, v_all

    def reserve(self, needed: int) -> None:
        """Make room for `needed` slots (K and V written in place by the native decode step)."""
        if needed > self.k.shape[2]:
            self._grow(needed)

    def _grow(self, needed: int) -> None:
        if self.cache.kind == "static":
            raise CacheFullError(f"static cache holds {self.k.shape[2]} tokens; {needed} needed")
        capacity = max(needed, 2 * self.k.shape[2])
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros(old.shape[:2] + (capacity,) + old.shape[3:])
            new[:, :, : old.shape[2]] = old
            setattr(self, name, new)

    def reorder(self, rows: torch.Tensor) -> None:
        self.k, self.v = self.k.index_select(0, rows), self.v.index_select(0, rows)

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class MambaSlot:
    """Recurrent state of one Mamba-2 block (nn/mamba2.py), the same size at any context length.

    conv (B, conv_dim, d_conv - 1): the last inputs of the causal conv, zeros before the first token.
    ssm (B, H, P, N): the SSM state h, kept in float32 at least (it accumulates over every token).
    Cannot be rewound (see the module doc) except to a state it kept: while `keeping`, the mixer
    hands every forward's conv inputs and per-token SSM states to `keep`, and `rewind` returns to
    any of them. `reorder` moves rows whole.
    """

    def __init__(self, cache: "Cache", cfg: ModelConfig):
        b, device = cache.batch_size, cache.device
        self.conv = torch.zeros(b, cfg.mamba_conv_dim, cfg.d_conv - 1, dtype=cache.dtype, device=device)
        self.ssm = torch.zeros(b, cfg.mamba_n_heads, cfg.mamba_head_dim, cfg.d_state,
                               dtype=torch.promote_types(cache.dtype, torch.float32), device=device)
        # since the last checkpoint: the conv state there followed by every conv input since
        # (B, conv_dim, d_conv - 1 + n), and the SSM states there and after each token, n + 1 of
        # (B, H, P, N) in chunks of (B, T, H, P, N); None when not keeping
        self.kept_conv: torch.Tensor | None = None
        self.kept_ssm: list[torch.Tensor] | None = None

    @property
    def keeping(self) -> bool:
        return self.kept_ssm is not None

    @property
    def n_kept(self) -> int:
        """Tokens since the checkpoint, each with its kept state."""
        return 0 if self.kept_ssm is None else sum(s.shape[1] for s in self.kept_ssm) - 1

    def checkpoint(self) -> None:
        """Start keeping states here: `rewind` can return to this point or any later token."""
        self.kept_conv, self.kept_ssm = self.conv.clone(), [self.ssm[:, None].clone()]

    def stop_keeping(self) -> None:
        self.kept_conv = self.kept_ssm = None

    def keep(self, conv_inputs: torch.Tensor, ssm_states: torch.Tensor) -> None:
        """Called by the mixer after a forward of T tokens while `keeping`: conv_inputs
        (B, conv_dim, T) as they entered the conv window, ssm_states (B, T, H, P, N) after each token."""
        self.kept_conv = torch.cat((self.kept_conv, conv_inputs.to(self.kept_conv.dtype)), dim=2)
        self.kept_ssm.append(ssm_states.to(self.ssm.dtype))

    def rewind(self, n_drop: torch.Tensor) -> None:
        """Return row b to its state n_drop[b] tokens back (n_drop (B,) int64, at most `n_kept`),
        then checkpoint there."""
        if not self.keeping:
            raise RuntimeError("a Mamba state cannot go back: call cache.keep_states() before the forwards "
                               "that may be rolled back")
        n = self.n_kept
        if int(n_drop.max()) > n:
            raise RuntimeError(f"a Mamba state can go back at most {n} tokens (to the last checkpoint), "
                               f"not {int(n_drop.max())}")
        self.restore(n - n_drop)
        self.checkpoint()

    def restore(self, at: torch.Tensor) -> None:
        """Set row b to its kept state at[b] tokens after the checkpoint (at (B,) int64 in
        [0, n_kept]); the kept states stay, so a later restore may pick another point."""
        at = at.to(self.ssm.device)
        rows = torch.arange(self.ssm.shape[0], device=self.ssm.device)
        self.ssm.copy_(torch.cat(self.kept_ssm, dim=1)[rows, at])
        # the conv state after j tokens is the d_conv - 1 inputs ending at the j-th
        width = self.conv.shape[2]
        cols = at[:, None] + torch.arange(width, device=at.device)  # (B, d_conv - 1)
        index = cols[:, None, :].expand(-1, self.conv.shape[1], -1)
        self.conv.copy_(self.kept_conv.gather(2, index))

    def reorder(self, rows: torch.Tensor) -> None:
        self.conv, self.ssm = self.conv.index_select(0, rows), self.ssm.index_select(0, rows)
        if self.keeping:
            self.kept_conv = self.kept_conv.index_select(0, rows)
            self.kept_ssm = [s.index_select(0, rows) for s in self.kept_ssm]

    def nbytes(self) -> int:
        return self.conv.numel() * self.conv.element_size() + self.ssm.numel() * self.ssm.element_size()


class Cache:
    """Per-block inference state for a decoder: a KV slot per attention block, a `MambaSlot` per
    Mamba block, None for blocks without state (MLP, MoE)."""

    def __init__(self, cfg: ModelConfig, batch_size: int, *, kind: str = "dynamic",
                 max_len: int | None = None, window_only: bool = True, full_view: bool = False,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 kv_dtype: str = "float"):
        """kv_dtype: "float" keeps K/V in `dtype`; "float16" stores them as float16 (llama.cpp's
        default K/V type: half of float32's bytes), widened to `dtype` when attended over; "int8"
        stores them int8 with a scale per head and token (kv_quant.py), dequantized likewise."""
        if kind not in CACHE_KINDS:
            raise ValueError(f"cache kind must be one of {CACHE_KINDS}, not {kind!r}")
        if kind == "static" and max_len is None:
            raise ValueError("a static cache needs max_len")
        self.kind, self.batch_size, self.full_view = kind, batch_size, full_view and kind == "static"
        self.n_kv_heads, self.head_dim = cfg.n_kv_heads, cfg.head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.window = cfg.sliding_window
        # a ring of window - 1 keys: with the new token that is exactly the W keys it may see
        self.window_ring = bool(window_only and self.window and not self.full_view)
        if self.window_ring:
            capacity = self.window - 1
        else:
            capacity = max_len if kind == "static" else min(max_len or 256, 256)
        self.length = 0  # slots written so far (padding included)
        self.write_index = torch.zeros(0, dtype=torch.long, device=self.device)  # full_view: slots of this step
        self.has_padding = False
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.key_pos = torch.full((batch_size, capacity), -1, dtype=torch.long, device=self.device)
        kv_slot = KVSlot
        if kv_dtype not in ("float", "float16"):
            from .kv_quant import KV_DTYPES, Int8KVSlot  # imported here: kv_quant builds on KVSlot

            if kv_dtype not in KV_DTYPES:
                raise ValueError(f"KV cache dtype must be one of {KV_DTYPES}, not {kv_dtype!r}")
            kv_slot = Int8KVSlot
        self.kv_dtype = kv_dtype
        self.kv_store_dtype = torch.float16 if kv_dtype == "float16" else dtype
        # None, or attend_for(cache, step) -> the attention function (or None) the layers use for a
        # planned step instead of their own: set by its owner (generation/verify_attention.py)
        self.attend_for: Callable[["Cache", CacheStep], Callable | None] | None = None
        self.slots = [kv_slot(self, capacity) if b == "attention" else MambaSlot(self, cfg) if b == "mamba" else None
                      for b in cfg.blocks]

    # -- bookkeeping shared by all slots ------------------------------------------------------
    def ring_index(self, start: int, t: int) -> torch.Tensor:
        capacity = self.key_pos.shape[1]
        keep = min(t, capacity)
        return (torch.arange(start + t - keep, start + t, device=self.device)) % capacity

    def plan(self, n_new: int, attention_mask: torch.Tensor | None = None) -> CacheStep:
        """Positions and visible keys for a forward of n_new tokens (attention_mask (B, T): 1 = real)."""
        if attention_mask is not None:
            valid = attention_mask.to(device=self.device, dtype=torch.bool)
            q_pos = self.next_pos[:, None] + valid.long().cumsum(-1) - 1
            q_pos = q_pos.masked_fill(~valid, -1)
            self.has_padding |= not bool(valid.all())
        else:
            q_pos = self.next_pos[:, None] + torch.arange(n_new, device=self.device)
        start = self.length
        if self.window_ring:
            k_pos = torch.cat((self.key_pos, q_pos), dim=1)
            ring_full = start >= self.key_pos.shape[1]
            trivial = not self.has_padding and ring_full and n_new == 1
        else:
            if start + n_new > self.key_pos.shape[1]:
                self._grow_positions(start + n_new)
            self.key_pos[:, start:start + n_new] = q_pos
            if self.full_view:
                self.write_index = torch.arange(start, start + n_new, device=self.device)
            end = self.key_pos.shape[1] if self.full_view else start + n_new
            k_pos = self.key_pos[:, :end]
            fits_window = self.window is None or start + n_new <= self.window
            trivial = not self.has_padding and not self.full_view and fits_window and (n_new == 1 or start == 0)
        step = CacheStep(q_pos=q_pos, k_pos=k_pos, trivial=trivial, n_new=n_new)
        if self.attend_for is not None:  # e.g. a speculative verification attending as one-token steps
            step.attend = self.attend_for(self, step)
        return step

    def _grow_positions(self, needed: int) -> None:
        if self.kind == "static":
            raise CacheFullError(f"static cache holds {self.key_pos.shape[1]} tokens; {needed} needed")
        capacity = max(needed, 2 * self.key_pos.shape[1])
        grown = self.key_pos.new_full((self.batch_size, capacity), -1)
        grown[:, : self.key_pos.shape[1]] = self.key_pos
        self.key_pos = grown

    def commit(self, step: CacheStep) -> None:
        """Advance past the step's tokens; called once per forward after every layer ran."""
        if self.window_ring and self.key_pos.shape[1]:
            keep = min(step.n_new, self.key_pos.shape[1])
            idx = self.ring_index(self.length, step.n_new)
            self.key_pos.index_copy_(1, idx, step.q_pos[:, -keep:])
        self.length += step.n_new
        # a row whose tokens were all padding in this step keeps its position
        self.next_pos = torch.maximum(self.next_pos, step.q_pos.max(dim=1).values + 1)

    # -- whole-cache operations ---------------------------------------------------------------
    def reorder(self, rows: torch.Tensor) -> None:
        """Keep batch rows `rows` (B',) in that order (beam search)."""
        for slot in self.slots:
            if slot is not None:
                slot.reorder(rows)
        self.next_pos = self.next_pos.index_select(0, rows)
        self.key_pos = self.key_pos.index_select(0, rows)
        self.batch_size = rows.numel()

    def keep_states(self, on: bool = True) -> None:
        """From now on (on=True), Mamba slots keep the state after every token, so `rollback` can
        return to any token since this call; on=False stops and frees them. No effect on KV slots,
        which can always roll back. States already kept are dropped either way."""
        for slot in self.slots:
            if isinstance(slot, MambaSlot):
                slot.checkpoint() if on else slot.stop_keeping()

    def rollback(self, n_drop: int | list[int] | torch.Tensor) -> None:
        """Forget the last n_drop[b] tokens of row b (an int: of every row), positions included.

        Rows share the slot index, so the shortest drop is cut off the end of every slot and a row
        that drops more gets holes (position -1, masked like padding) at its tail. Mamba slots
        return to the state they kept there (see `keep_states`), then keep states from there on
        (also when nothing is dropped).
        The sliding-window ring cannot roll back: it has overwritten the keys it would need.
        """
        if self.window_ring:
            raise ValueError("a sliding-window ring cache cannot roll back (it overwrote the keys it would need); "
                             "build the cache with window_only=False")
        drop = torch.as_tensor(n_drop, dtype=torch.long).to(self.device).expand(self.batch_size)
        cut, most = int(drop.min()), int(drop.max())
        if cut < 0 or most > self.length:
            raise ValueError(f"cannot roll back {drop.tolist()} tokens of a cache holding {self.length}")
        for slot in self.slots:
            if isinstance(slot, MambaSlot) and (slot.keeping or most > 0):
                slot.rewind(drop)
        if most == 0:
            return
        index = torch.arange(self.key_pos.shape[1], device=self.device)
        forgotten = (index >= (self.length - drop)[:, None]) & (index < self.length)  # (B, S)
        self.key_pos.masked_fill_(forgotten, -1)
        self.has_padding |= cut != most
        self.length -= cut
        # positions are only ever appended, so each row continues after its last kept one
        kept = self.key_pos[:, :self.length]
        self.next_pos = (kept.max(dim=1).values + 1).clamp(min=0) if self.length else torch.zeros_like(self.next_pos)

    def nbytes(self) -> int:
        """Bytes held by the cache tensors (allocated capacity, not just the filled part)."""
        return sum(s.nbytes() for s in self.slots if s is not None)

    def __len__(self) -> int:
        return self.length
