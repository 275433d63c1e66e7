"""The engine's cache: paged K/V pools for attention layers, a pool of state slots for Mamba layers,
behind the same slot interface as `hybridlm.cache.Cache`, so `Decoder.forward(ids, cache)` runs
an engine step unchanged.

    attention layer:  k, v pools (R, H_kv, D), R = n_blocks * block_size token rows. Block b holds
                      rows [b * block_size, (b + 1) * block_size); a sequence's block table lists
                      its blocks (block_pool.py does the bookkeeping). `update(k, v)` writes the
                      step's new rows and returns the pools; the step's attend function
                      (paged_attention.py) reads each sequence's rows.
    Mamba layer:      conv (S, conv_dim, d_conv - 1) and ssm (S, H, P, N) state rows: one per running
                      sequence, then the snapshot rows of hybrid prefix caching. Its slot runs the
                      mixer per sequence: decodes batched through `Mamba2.step` on gathered rows,
                      prefill chunks one sequence at a time through `Mamba2.forward` on row views.

A step is laid out by `prepare` before the forward: one row (1, T) of tokens, the decode tokens
first, then each prefill chunk; `plan` hands the model that layout as a CacheStep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cache import CacheStep
from ..config import ModelConfig
from .paged_attention import DecodeBatch, PrefillChunk, make_attend


@dataclass
class SeqWork:
    """One sequence's share of a step: n tokens from position `pos`, over its blocks."""

    pos: int
    n: int
    blocks: list[int]
    state_slot: int | None = None


class _StateRows:
    """A MambaSlot look-alike over some rows of a state pool (what `Mamba2` reads and writes)."""

    keeping = False  # the engine never rolls a state back (speculative decoding keeps its own cache)

    def __init__(self, conv: torch.Tensor, ssm: torch.Tensor):
        self.conv, self.ssm = conv, ssm


class PagedKVSlot:
    def __init__(self, owner: "PagedCache", n_rows: int, cfg: ModelConfig, dtype, device):
        self.owner = owner
        self.k = torch.zeros(n_rows, cfg.n_kv_heads, cfg.head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (1, H_kv, T, D) of this step's tokens -> written at their rows; returns the pools."""
        rows = self.owner.rows
        self.k.index_copy_(0, rows, k[0].transpose(0, 1).to(self.k.dtype))
        self.v.index_copy_(0, rows, v[0].transpose(0, 1).to(self.v.dtype))
        return self.k, self.v

    def copy_block(self, src: int, dst: int, n_tokens: int) -> None:
        bs = self.owner.block_size
        self.k[dst * bs:dst * bs + n_tokens] = self.k[src * bs:src * bs + n_tokens]
        self.v[dst * bs:dst * bs + n_tokens] = self.v[src * bs:src * bs + n_tokens]

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


class PagedMambaSlot:
    varlen = True  # Block hands this slot the whole flat batch (models/decoder.py)

    def __init__(self, owner: "PagedCache", n_rows: int, cfg: ModelConfig, dtype, device):
        self.owner = owner
        self.conv = torch.zeros(n_rows, cfg.mamba_conv_dim, cfg.d_conv - 1, dtype=dtype, device=device)
        self.ssm = torch.zeros(n_rows, cfg.mamba_n_heads, cfg.mamba_head_dim, cfg.d_state,
                               dtype=torch.promote_types(dtype, torch.float32), device=device)

    def forward_varlen(self, mixer, h: torch.Tensor) -> torch.Tensor:
        """h (1, T, d_model) laid out as the step says -> (1, T, d_model); advances each sequence's state."""
        owner, outs = self.owner, []
        n_dec = owner.n_decode
        if n_dec:
            idx = owner.decode_state_idx
            rows = _StateRows(self.conv.index_select(0, idx), self.ssm.index_select(0, idx))
            outs.append(mixer.step(h[0, :n_dec, None], rows)[:, 0])  # (n_dec, d_model)
            self.conv.index_copy_(0, idx, rows.conv)
            self.ssm.index_copy_(0, idx, rows.ssm)
        for start, n, slot in owner.chunk_states:
            rows = _StateRows(self.conv[slot:slot + 1], self.ssm[slot:slot + 1])  # views: written in place
            if slot in owner.keeping:  # a verifying sequence keeps each token's state (engine/speculative.py)
                rows = owner.keeping[slot].rows_for(rows)
            outs.append(mixer(h[:, start:start + n], rows)[0])
        return (outs[0] if len(outs) == 1 else torch.cat(outs))[None]

    def copy_state(self, src: int, dst: int) -> None:
        self.conv[dst] = self.conv[src]
        self.ssm[dst] = self.ssm[src]

    def zero_state(self, row: int) -> None:
        self.conv[row].zero_()
        self.ssm[row].zero_()

    def nbytes(self) -> int:
        return self.conv.numel() * self.conv.element_size() + self.ssm.numel() * self.ssm.element_size()


class PagedCache:
    """The engine's cache for one model: pools sized once at start, laid out afresh every step."""

    def __init__(self, cfg: ModelConfig, n_blocks: int, block_size: int, n_state_rows: int, *,
                 attention: str = "native", dtype: torch.dtype = torch.float32, device="cpu"):
        self.cfg, self.block_size, self.n_blocks, self.attention = cfg, block_size, n_blocks, attention
        self.device = torch.device(device)
        self.slots = [PagedKVSlot(self, n_blocks * block_size, cfg, dtype, device) if b == "attention"
                      else PagedMambaSlot(self, n_state_rows, cfg, dtype, device) if b == "mamba" else None
                      for b in cfg.blocks]
        self.kv_slots = [s for s in self.slots if isinstance(s, PagedKVSlot)]
        self.mamba_slots = [s for s in self.slots if isinstance(s, PagedMambaSlot)]
        self._step: CacheStep | None = None
        self.rows = self.decode_state_idx = None
        self.n_decode = 0
        self.chunk_states: list[tuple[int, int, int]] = []
        self.keeping: dict = {}  # state row -> speculative.KeptStates, for sequences verifying drafts

    # -- one step ---------------------------------------------------------------------------------
    def prepare(self, decodes: list[SeqWork], chunks: list[SeqWork], tokens: list[int],
                out_columns: list[int]) -> torch.Tensor:
        """Lay out a step: decodes (n == 1 each) then chunks, `tokens` their ids in that order.
        out_columns: the columns whose logits the forward returns. -> input ids (1, T)."""
        bs, dev = self.block_size, self.device
        positions, rows = [], []
        for w in (*decodes, *chunks):
            for p in range(w.pos, w.pos + w.n):
                positions.append(p)
                rows.append(w.blocks[p // bs] * bs + p % bs)
        if len(positions) != len(tokens):
            raise ValueError(f"step layout has {len(positions)} positions for {len(tokens)} tokens")
        self.rows = torch.tensor(rows, dtype=torch.long, device=dev)
        q_pos = torch.tensor([positions], dtype=torch.long, device=dev)
        decode = None
        self.n_decode = len(decodes)
        if decodes:
            width = max(len(w.blocks) for w in decodes)
            tables = [w.blocks + [0] * (width - len(w.blocks)) for w in decodes]
            decode = DecodeBatch(len(decodes), torch.tensor(tables, dtype=torch.int32, device=dev),
                                 torch.tensor([w.pos + 1 for w in decodes], dtype=torch.int32, device=dev))
            if self.mamba_slots:
                self.decode_state_idx = torch.tensor([w.state_slot for w in decodes], dtype=torch.long, device=dev)
        prefill, self.chunk_states, start = [], [], len(decodes)
        for w in chunks:
            if self.kv_slots:
                blocks = torch.tensor(w.blocks, dtype=torch.long, device=dev)
                offsets = torch.arange(bs, device=dev)
                prefill.append(PrefillChunk(start, w.n, w.pos, (blocks[:, None] * bs + offsets).flatten()[:w.pos + w.n]))
            self.chunk_states.append((start, w.n, w.state_slot))
            start += w.n
        attend = make_attend(decode, prefill, bs, self.cfg.sliding_window, self.attention)
        out_index = torch.tensor(out_columns, dtype=torch.long, device=dev)
        self._step = CacheStep(q_pos=q_pos, k_pos=q_pos, trivial=True, n_new=len(positions), attend=attend,
                               out_index=out_index)
        return torch.tensor([tokens], dtype=torch.long, device=dev)

    def plan(self, n_new: int, attention_mask: torch.Tensor | None = None) -> CacheStep:
        """The step `prepare` laid out (the Decoder calls this at the top of its forward)."""
        if self._step is None or n_new != self._step.n_new or attention_mask is not None:
            raise RuntimeError("a paged cache runs only the step its engine prepared (no padding masks)")
        return self._step

    def commit(self, step: CacheStep) -> None:
        """Nothing to advance: the engine's scheduler owns every sequence's length."""
        self._step = None

    # -- whole-block and state-row copies (prefix caching) ----------------------------------------
    def copy_block(self, src: int, dst: int, n_tokens: int) -> None:
        for slot in self.kv_slots:
            slot.copy_block(src, dst, n_tokens)

    def copy_state(self, src: int, dst: int) -> None:
        for slot in self.mamba_slots:
            slot.copy_state(src, dst)

    def zero_state(self, row: int) -> None:
        for slot in self.mamba_slots:
            slot.zero_state(row)

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.slots if s is not None)
