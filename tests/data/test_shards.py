import numpy as np
import pytest

from hybridlm.data.shards import ShardError, TokenShards, token_dtype, write_manifest, write_split


def test_round_trip_across_files(tmp_path):
    docs = [np.arange(i, i + 7) for i in range(0, 50, 7)]
    entry = write_split(tmp_path, "train", docs, vocab_size=100, shard_tokens=10)
    write_manifest(tmp_path, {"dtype": "uint16", "vocab_size": 100, "eos_token_id": None,
                              "splits": {"train": entry}})
    shards = TokenShards(tmp_path, "train")
    assert len(entry["files"]) == 6 and len(shards) == 56
    np.testing.assert_array_equal(shards.window(8, 15), np.concatenate(docs)[8:23])
    with pytest.raises(IndexError):
        shards.window(50, 10)


def test_dtype_follows_the_vocabulary():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_bad_datasets_say_why(tmp_path):
    with pytest.raises(ShardError, match="no manifest.json"):
        TokenShards(tmp_path)
    with pytest.raises(ShardError, match="outside"):
        write_split(tmp_path, "train", [np.array([5, 200])], vocab_size=100)
    entry = write_split(tmp_path, "train", [np.arange(5)], vocab_size=100)
    write_manifest(tmp_path, {"dtype": "uint16", "vocab_size": 100, "splits": {"train": entry}})
    with pytest.raises(ShardError, match="no split 'val'"):
        TokenShards(tmp_path, "val")
    (tmp_path / entry["files"][0]).unlink()
    with pytest.raises(ShardError, match="missing"):
        TokenShards(tmp_path, "train")


def test_a_failure_inside_a_shard_leaves_no_file(tmp_path):
    """Shards are written array by array: the one open when the stream fails is removed, temporary included."""
    def arrays():
        yield np.arange(5)
        yield np.array([5, 200])  # out of range: fails while train_00000.bin is half written

    with pytest.raises(ShardError, match="outside"):
        write_split(tmp_path, "train", arrays(), vocab_size=100, shard_tokens=1000)
    assert list(tmp_path.iterdir()) == []
