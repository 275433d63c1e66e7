"""The paged attention paths against their references: the native decode op against the gather-
then-softmax reference, and a whole flattened step (decodes + prefill chunks) fast against ref."""

import pytest
import torch

from hybridlm.engine.paged_attention import DecodeBatch, PrefillChunk, make_attend
from hybridlm.kernels import paged_attention as native

BS, N_BLOCKS, H_KV, H, D = 4, 40, 2, 6, 16


def pools(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N_BLOCKS * BS, H_KV, D, generator=g), torch.randn(N_BLOCKS * BS, H_KV, D, generator=g))


def tables(lengths, seed=1):
    """Each sequence gets its own scattered blocks, as a pool hands them out."""
    perm = torch.randperm(N_BLOCKS, generator=torch.Generator().manual_seed(seed)).tolist()
    out, width = [], max(-(-n // BS) for n in lengths)
    for n in lengths:
        k = -(-n // BS)
        out.append(perm[:k] + [0] * (width - k))
        perm = perm[k:]
    return torch.tensor(out, dtype=torch.int32)


@pytest.mark.parametrize("window", [None, 5])
def test_native_decode_op_equals_reference(window):
    k, v = pools()
    lengths = [1, 4, 5, 17, 30]
    q = torch.randn(len(lengths), H, D)
    bt, lens = tables(lengths), torch.tensor(lengths, dtype=torch.int32)
    fast = native.paged_decode_attention(q, k, v, bt, lens, BS, window)
    ref = native.paged_decode_attention_ref(q, k, v, bt, lens, BS, window)
    torch.testing.assert_close(fast, ref)


def test_reference_is_plain_attention_over_the_sequence_rows():
    k, v = pools()
    q = torch.randn(1, H, D)
    bt = tables([9])
    rows = native.token_rows(bt[0], BS, 9)
    ks, vs = k[rows].repeat_interleave(H // H_KV, 1), v[rows].repeat_interleave(H // H_KV, 1)  # (S, H, D)
    probs = torch.softmax(torch.einsum("hd,shd->hs", q[0], ks) / D ** 0.5, -1)  # (H, S)
    expected = torch.einsum("hs,shd->hd", probs, vs)
    out = native.paged_decode_attention_ref(q, k, v, bt, torch.tensor([9], dtype=torch.int32), BS)
    torch.testing.assert_close(out[0], expected)


def test_native_op_has_a_fake_implementation():
    native.load()
    with torch._subclasses.fake_tensor.FakeTensorMode():
        q = torch.empty(3, H, D)
        pool = torch.empty(N_BLOCKS * BS, H_KV, D)
        out = torch.ops.hybridlm.paged_decode_attention(q, pool, pool,
                                                         torch.zeros(3, 2, dtype=torch.int32),
                                                         torch.ones(3, dtype=torch.int32), BS, 0, 0.25)
        assert out.shape == (3, H, D)


@pytest.mark.parametrize("impl", ["native", "gather"])
@pytest.mark.parametrize("window", [None, 6])
def test_flattened_step_fast_equals_reference(impl, window):
    """Three decodes (contexts 3, 9, 14) then two chunks: a fresh prompt of 7 and a continuation of
    5 tokens after 10 cached ones. Every query must see exactly its own sequence's keys."""
    k, v = pools(2)
    dec_lens, chunk_specs = [3, 9, 14], [(0, 7), (10, 5)]
    bt = tables(dec_lens + [p + n for p, n in chunk_specs], seed=3)
    decode = DecodeBatch(3, bt[:3], torch.tensor(dec_lens, dtype=torch.int32))
    chunks, start = [], 3
    for i, (pos, n) in enumerate(chunk_specs):
        chunks.append(PrefillChunk(start, n, pos, native.token_rows(bt[3 + i], BS, pos + n)))
        start += n
    q = torch.randn(1, H, start, D)
    fast = make_attend(decode, chunks, BS, window, impl)(q, k, v)
    ref = make_attend(decode, chunks, BS, window, "ref")(q, k, v)
    assert fast.shape == (1, H, start, D)
    torch.testing.assert_close(fast, ref)
    # and the reference really is per sequence: changing another sequence's keys leaves a row alone
    k2 = k.clone()
    k2[native.token_rows(bt[1], BS, 9)] += torch.randn(9, H_KV, D)
    again = make_attend(decode, chunks, BS, window, "ref")(q, k2, v)
    torch.testing.assert_close(again[:, :, 0], ref[:, :, 0])
    assert not torch.allclose(again[:, :, 1], ref[:, :, 1])
