import numpy as np
import pytest
import torch

from hybridlm.data.shards import TokenShards, write_manifest, write_split
from hybridlm.train.data import TrainBatches, validation_batches


@pytest.fixture
def counting(tmp_path):
    """A split whose token i is i % 1000, so every window is identified by its first token."""
    entry = write_split(tmp_path, "train", [np.arange(1001) % 1000], vocab_size=1000, shard_tokens=300)
    write_manifest(tmp_path, {"dtype": "uint16", "vocab_size": 1000, "splits": {"train": entry, "val": entry}})
    return TokenShards(tmp_path, "train")


def test_an_epoch_visits_every_window_once_and_epochs_differ(counting):
    b = TrainBatches(counting, seq_len=10, seed=3)
    assert b.n_windows == 100
    first = b.batch(0, 100)[:, 0].tolist()
    assert sorted(first) == list(range(0, 1000, 10))
    second = b.batch(100, 100)[:, 0].tolist()
    assert sorted(second) == sorted(first) and second != first
    row = b.batch(7, 1)[0]
    torch.testing.assert_close(row[1:], row[:-1] + 1)  # targets are the next tokens


def test_ranks_split_the_same_global_batch(counting):
    b = TrainBatches(counting, seq_len=10, seed=0)
    seen, global_batch = 40, 8
    alone = torch.cat([b.micro_batch(seen, global_batch, 0, 1, m, 2) for m in range(4)])
    ranks = torch.cat([b.micro_batch(seen, global_batch, r, 2, m, 2) for r in range(2) for m in range(2)])
    torch.testing.assert_close(alone, ranks)
    assert TrainBatches(counting, 10, seed=0).batch(40, 8).equal(alone)  # a function of the index alone


def test_validation_batches_are_even_over_ranks(counting):
    per_rank = [validation_batches(counting, 10, 9, r, 2, size=3) for r in range(2)]
    assert [sum(len(x) for x in p) for p in per_rank] == [4, 4]  # 9 rounded down to 8
    starts = sorted(int(x[0]) for p in per_rank for batch in p for x in batch)
    assert starts == list(range(0, 80, 10))
