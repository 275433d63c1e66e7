"""Cache rollback: after forgetting tokens, the cache is the one that never saw them (KV slots,
positions and Mamba states), and forwards from it continue identically."""

import pytest
import torch

from hybridlm.cache import KVSlot, MambaSlot

VOCAB = 1024


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a loaded 2-core machine torch's
    threads wait on each other (see test_speculative.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ids(n, seed=0, rows=1):
    return torch.randint(0, VOCAB, (rows, n), generator=torch.Generator().manual_seed(seed))


def assert_same_state(cache, ref, row=0, ref_row=0, atol=1e-12):
    """Row `row` of `cache` holds what row `ref_row` of `ref` holds: the same keys at the same
    positions (holes in `cache` aside), the same next position, the same Mamba state."""
    assert int(cache.next_pos[row]) == int(ref.next_pos[ref_row])
    filled = cache.key_pos[row, :cache.length] >= 0
    ref_filled = ref.key_pos[ref_row, :ref.length] >= 0
    torch.testing.assert_close(cache.key_pos[row, :cache.length][filled], ref.key_pos[ref_row, :ref.length][ref_filled])
    for slot, ref_slot in zip(cache.slots, ref.slots):
        if isinstance(slot, KVSlot):
            for name in ("k", "v"):
                got = getattr(slot, name)[row, :, :cache.length][:, filled]
                want = getattr(ref_slot, name)[ref_row, :, :ref.length][:, ref_filled]
                torch.testing.assert_close(got, want, atol=atol, rtol=0)
        elif isinstance(slot, MambaSlot):
            torch.testing.assert_close(slot.conv[row], ref_slot.conv[ref_row], atol=atol, rtol=0)
            torch.testing.assert_close(slot.ssm[row], ref_slot.ssm[ref_row], atol=atol, rtol=0)


CASES = [("llama-tiny", dict(kind="dynamic")), ("llama-tiny", dict(kind="static", max_len=64)),
         ("llama-tiny", dict(kind="static", max_len=64, full_view=True)), ("gpt2-tiny", dict(kind="dynamic")),
         ("mistral-tiny", dict(kind="dynamic", window_only=False)),
         ("nemotron-h-tiny", dict(kind="dynamic")), ("nemotron-h-tiny", dict(kind="static", max_len=64))]


@pytest.mark.parametrize("name, kwargs", CASES, ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in CASES])
def test_rollback_forgets_tokens_as_if_never_seen(make_decoder, name, kwargs):
    model = make_decoder(name, std=0.1).double()
    prompt, extra, more = ids(12), ids(6, seed=1), ids(3, seed=2)
    with torch.inference_mode():
        cache = model.new_cache(1, **kwargs)
        model(prompt, cache)
        cache.keep_states()
        model(extra, cache)  # a verification-like forward of 6 tokens
        cache.rollback(4)  # keep 2 of them
        ref = model.new_cache(1, **kwargs)
        model(torch.cat((prompt, extra[:, :2]), 1), ref)
        assert cache.length == ref.length == 14
        assert_same_state(cache, ref)
        torch.testing.assert_close(model(more, cache), model(more, ref), atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["llama-tiny", "nemotron-h-tiny"])
def test_rollback_spans_several_forwards_and_may_drop_all_since_keep(make_decoder, name):
    model = make_decoder(name, std=0.1).double()
    prompt, extra, more = ids(10), ids(5, seed=1), ids(2, seed=2)
    with torch.inference_mode():
        cache = model.new_cache(1)
        model(prompt, cache)
        cache.keep_states()
        model(extra[:, :2], cache)  # one forward of 2 tokens, then 3 decode steps
        for i in range(2, 5):
            model(extra[:, i:i + 1], cache)
        cache.rollback(4)  # back into the first forward
        ref = model.new_cache(1)
        model(torch.cat((prompt, extra[:, :1]), 1), ref)
        assert_same_state(cache, ref)
        model(more, cache)
        cache.rollback(2)  # everything since the last rollback (which checkpointed)
        assert_same_state(cache, ref)
        torch.testing.assert_close(model(more, cache), model(more, ref), atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["llama-tiny", "nemotron-h-tiny"])
@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_rows_rolled_back_by_different_counts_continue_like_each_row_alone(make_decoder, name, kind):
    model = make_decoder(name, std=0.1).double()
    prompt, extra, more = ids(9, rows=3), ids(5, seed=1, rows=3), ids(3, seed=2, rows=3)
    drops = [1, 4, 2]
    with torch.inference_mode():
        cache = model.new_cache(3, kind=kind, max_len=64)
        model(prompt, cache)
        cache.keep_states()
        model(extra, cache)
        cache.rollback(drops)
        assert cache.length == 9 + 5 - min(drops)  # the shortest drop is cut; the rest are holes
        got = model(more, cache)
        for row, drop in enumerate(drops):
            ref = model.new_cache(1, kind=kind, max_len=64)
            model(torch.cat((prompt[row:row + 1], extra[row:row + 1, :5 - drop]), 1), ref)
            want = model(more[row:row + 1], ref)
            torch.testing.assert_close(got[row:row + 1], want, atol=1e-10, rtol=0)


def test_rollback_of_zero_tokens_changes_nothing(make_decoder):
    model = make_decoder("nemotron-h-tiny", std=0.1).double()
    with torch.inference_mode():
        cache = model.new_cache(1)
        model(ids(8), cache)
        cache.keep_states()
        model(ids(3, seed=1), cache)
        before = [(s.conv.clone(), s.ssm.clone()) for s in cache.slots if isinstance(s, MambaSlot)]
        cache.rollback(0)
        assert len(cache) == 11 and int(cache.next_pos[0]) == 11
        for (conv, ssm), slot in zip(before, [s for s in cache.slots if isinstance(s, MambaSlot)]):
            assert torch.equal(conv, slot.conv) and torch.equal(ssm, slot.ssm)
            assert slot.n_kept == 0  # checkpointed at the new end


def test_mamba_rollback_needs_kept_states_and_stays_within_them(make_decoder):
    model = make_decoder("nemotron-h-tiny", std=0.1)
    with torch.inference_mode():
        cache = model.new_cache(1)
        model(ids(8), cache)
        model(ids(3, seed=1), cache)
        with pytest.raises(RuntimeError, match="keep_states"):
            cache.rollback(1)
        cache.keep_states()
        model(ids(3, seed=2), cache)
        with pytest.raises(RuntimeError, match="at most 3 tokens"):
            cache.rollback(5)
        cache.keep_states(False)
        assert all(not s.keeping for s in cache.slots if isinstance(s, MambaSlot))


def test_attention_only_cache_rolls_back_without_keeping_and_checks_bounds(make_decoder):
    model = make_decoder("llama-tiny")
    with torch.inference_mode():
        cache = model.new_cache(2)
        model(ids(5, rows=2), cache)
        with pytest.raises(ValueError, match="cannot roll back"):
            cache.rollback(6)
        with pytest.raises(ValueError, match="cannot roll back"):
            cache.rollback([-1, 0])
        cache.rollback([2, 3])
        assert cache.length == 3 and cache.next_pos.tolist() == [3, 2]


def test_ring_window_cache_refuses_rollback(make_decoder):
    model = make_decoder("mistral-tiny", sliding_window=6)
    with torch.inference_mode():
        cache = model.new_cache(1, window_only=True)
        model(ids(10), cache)
        with pytest.raises(ValueError, match="window_only=False"):
            cache.rollback(1)
