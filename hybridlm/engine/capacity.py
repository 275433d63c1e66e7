"""How much the engine's memory budgets hold: bytes per token of KV, bytes per sequence of Mamba
state, and from them blocks, snapshot rows and how many sequences of a length fit."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..config import ModelConfig
from .config import EngineConfig


def _size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def kv_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
    """K and V of every attention layer for one token."""
    return cfg.blocks.count("attention") * 2 * cfg.n_kv_heads * cfg.head_dim * _size(dtype)


def state_bytes_per_seq(cfg: ModelConfig, dtype: torch.dtype) -> int:
    """Conv + SSM state of every Mamba layer for one sequence (the SSM state is float32 at least)."""
    n = cfg.blocks.count("mamba")
    if not n:
        return 0
    conv = cfg.mamba_conv_dim * (cfg.d_conv - 1) * _size(dtype)
    ssm = cfg.mamba_n_heads * cfg.mamba_head_dim * cfg.d_state * _size(torch.promote_types(dtype, torch.float32))
    return n * (conv + ssm)


def n_blocks_for(cfg: ModelConfig, config: EngineConfig, dtype: torch.dtype) -> int:
    """Blocks in the KV pool. A model without attention layers keeps blocks as bookkeeping only
    (no tensors): enough for max_num_seqs sequences of the full context."""
    per_token = kv_bytes_per_token(cfg, dtype)
    if per_token == 0:
        return config.max_num_seqs * -(-cfg.max_seq_len // config.block_size)
    return config.kv_memory // (per_token * config.block_size)


@dataclass
class Capacity:
    seq_len: int  # the sequence length asked about (prompt + output)
    block_size: int
    kv_blocks: int
    kv_tokens: int  # tokens the KV pool holds
    kv_bytes_per_token: int
    state_bytes_per_seq: int  # hybrids: Mamba state of one running sequence (fixed at any length)
    max_seqs: int  # sequences of seq_len that run at once (KV pool and max_num_seqs)
    snapshot_rows: int  # hybrids: Mamba snapshots the snapshot budget holds
    memory_bytes: int  # KV pools + running state rows + snapshot rows

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        text = (f"KV cache: {self.kv_blocks} blocks of {self.block_size} tokens = {self.kv_tokens} tokens "
                f"({self.kv_bytes_per_token} B/token); {self.max_seqs} concurrent sequences of {self.seq_len} tokens")
        if self.state_bytes_per_seq:
            text += (f"; Mamba state {self.state_bytes_per_seq} B/sequence, {self.snapshot_rows} prefix snapshots")
        return text + f"; {self.memory_bytes / 2**20:.1f} MiB in all"


def capacity(cfg: ModelConfig, config: EngineConfig, dtype: torch.dtype, n_blocks: int, snapshot_rows: int,
             seq_len: int) -> Capacity:
    per_token, per_seq = kv_bytes_per_token(cfg, dtype), state_bytes_per_seq(cfg, dtype)
    blocks_per_seq = max(1, -(-seq_len // config.block_size))
    max_seqs = min(config.max_num_seqs, n_blocks // blocks_per_seq)
    memory = n_blocks * config.block_size * per_token + (config.max_num_seqs + snapshot_rows) * per_seq
    return Capacity(seq_len, config.block_size, n_blocks, n_blocks * config.block_size, per_token, per_seq,
                    max_seqs, snapshot_rows, memory)
