import pytest
from hypothesis import given, settings, strategies as st

from hybridlm.engine.block_pool import BlockPool, NoFreeBlocksError, hash_block, hash_blocks


def test_hashes_chain_over_the_prefix_and_the_salt():
    a = hash_blocks([1, 2, 3, 4, 5, 6, 7, 8], 4)
    assert len(a) == 2 and a[0] == hash_block(None, [1, 2, 3, 4])
    assert a[1] == hash_block(a[0], [5, 6, 7, 8])
    # same second block after a different first block: a different key
    assert hash_blocks([9, 2, 3, 4, 5, 6, 7, 8], 4)[1] != a[1]
    assert hash_blocks([1, 2, 3, 4], 4, salt="tenant") != a[:1]
    assert hash_blocks([1, 2, 3], 4) == []  # partial blocks are not hashed
    assert hash_blocks([1, 2, 3, 4, 5, 6, 7, 8, 9], 4, parent=a[0], start=4) == a[1:]


def test_allocate_release_and_exhaustion():
    pool = BlockPool(4)
    blocks = pool.allocate(3)
    assert pool.n_used == 3 and pool.n_free == 1
    with pytest.raises(NoFreeBlocksError):
        pool.allocate(2)
    pool.release(blocks)
    assert pool.n_free == 4
    with pytest.raises(RuntimeError, match="released more often"):
        pool.release(blocks[:1])
    pool.check()


def test_cached_block_is_reused_by_hash_and_evicted_last_first():
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    assert pool.cache_block(a, b"A") and pool.cache_block(b, b"B")
    assert not pool.cache_block(c, b"A")  # a duplicate stays uncached
    pool.release([a, b, c])
    assert pool.lookup(b"A") == a
    # uncached c goes first, then the least recently freed cached block
    assert pool.allocate(1) == [c]
    pool.touch([pool.lookup(b"B")])  # a hit takes B out of the free queue
    assert pool.n_free == 1
    (x,) = pool.allocate(1)
    assert x == a and pool.lookup(b"A") is None and pool.evictions == 1
    pool.check()


def test_caching_disabled_never_hits():
    pool = BlockPool(2, enable_caching=False)
    (a,) = pool.allocate(1)
    assert not pool.cache_block(a, b"A")
    assert pool.lookup(b"A") is None


ops = st.lists(st.tuples(st.sampled_from(["alloc", "release", "cache", "hit", "reset"]),
                         st.integers(0, 7), st.integers(0, 5)), max_size=80)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_any_mix_of_operations_keeps_the_books_and_leaks_nothing(sequence):
    pool = BlockPool(8)
    owners: list[list[int]] = []  # each owner's block list, as a sequence's block table
    for op, a, b in sequence:
        if op == "alloc":
            n = a % 4 + 1
            if n <= pool.n_free:
                owners.append(pool.allocate(n))
            else:
                with pytest.raises(NoFreeBlocksError):
                    pool.allocate(n)
        elif op == "release" and owners:
            pool.release(owners.pop(a % len(owners)))
        elif op == "cache" and owners:
            blocks = owners[a % len(owners)]
            pool.cache_block(blocks[b % len(blocks)], bytes([b]))
        elif op == "hit":
            block = pool.lookup(bytes([b]))
            if block is not None:
                pool.touch([block])
                owners.append([block])
        elif op == "reset":
            pool.reset_cache()
        pool.check()
        held = {blk for blocks in owners for blk in blocks}
        assert pool.n_used == len(held)
        assert pool.n_free + pool.n_used == pool.n_blocks
    for blocks in owners:
        pool.release(blocks)
    pool.check()
    assert pool.n_free == pool.n_blocks
