"""Training and validation batches from token shards, as a pure function of a sample index.

The training split is cut into non-overlapping windows of seq_len + 1 tokens (inputs and the
shifted targets share seq_len tokens). Each epoch visits every window once in an order drawn from
(seed, epoch). Sample i of the run is window perm_{i // n}[i % n]: no iterator state, so the data
position a checkpoint records is one integer (samples seen) and a resumed run reads exactly what
an uninterrupted one would. An optimizer step consumes the global batch [seen, seen + G); rank r's
micro-batch m is its slice [seen + r * G / W + m * B, ... + B), so every world size sees the same
samples in a step, which is what makes DDP and FSDP equal to one process.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.shards import ShardError, TokenShards


class TrainBatches:
    def __init__(self, shards: TokenShards, seq_len: int, seed: int):
        self.shards, self.seq_len, self.seed = shards, seq_len, seed
        self.n_windows = (len(shards) - 1) // seq_len
        if self.n_windows < 1:
            raise ShardError(f"the training split has {len(shards)} tokens, fewer than one sequence of "
                             f"{seq_len + 1}")
        self._epoch, self._perm = -1, None

    def _window(self, i: int) -> int:
        epoch, k = divmod(i, self.n_windows)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
        return int(self._perm[k])

    def batch(self, first: int, count: int) -> torch.Tensor:
        """Samples [first, first + count) -> int64 (count, seq_len + 1)."""
        rows = [self.shards.window(self._window(i) * self.seq_len, self.seq_len + 1) for i in range(first, first + count)]
        return torch.from_numpy(np.stack(rows))

    def micro_batch(self, seen: int, global_batch: int, rank: int, world: int, micro: int, size: int) -> torch.Tensor:
        """Rank `rank`'s micro-batch `micro` of the optimizer step that starts at sample `seen`."""
        return self.batch(seen + rank * (global_batch // world) + micro * size, size)


def validation_batches(shards: TokenShards, seq_len: int, n_sequences: int, rank: int, world: int,
                       size: int) -> list[torch.Tensor]:
    """The first n_sequences non-overlapping windows of the validation split (fewer if it is short),
    rounded down so every rank gets the same number of batches (FSDP ranks must run the same number
    of forwards). Rank r takes windows r, r + W, ...; -> list of int64 (b, seq_len + 1)."""
    available = (len(shards) - 1) // seq_len
    per_rank = min(n_sequences, available) // world
    mine = [shards.window((rank + j * world) * seq_len, seq_len + 1) for j in range(per_rank)]
    return [torch.from_numpy(np.stack(mine[i:i + size])) for i in range(0, len(mine), size)]
