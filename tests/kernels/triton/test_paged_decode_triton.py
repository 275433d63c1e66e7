"""Paged decode attention in Triton (kernels/paged_decode_triton.py) against the gather-then-softmax
reference, over scattered blocks, with GQA, windows and split-K."""

import pytest
import torch

from hybridlm.kernels import triton_support
from hybridlm.kernels.paged_attention import paged_decode_attention_ref

from .conftest import DEVICE

pd = pytest.importorskip("hybridlm.kernels.paged_decode_triton") if triton_support.installed() else None


def _pools(seed=0, block_size=4, n_blocks=60, h=4, h_kv=2, d=32, lens=(1, 13, 37, 50)):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(n_blocks * block_size, h_kv, d, generator=g)
    v = torch.randn(n_blocks * block_size, h_kv, d, generator=g)
    per_seq = -(-max(lens) // block_size)
    tables = torch.randperm(n_blocks, generator=g)[: len(lens) * per_seq].view(len(lens), per_seq).int()
    q = torch.randn(len(lens), h, d, generator=g)
    return [t.to(DEVICE) for t in (q, k, v, tables, torch.tensor(lens, dtype=torch.int32))]


@pytest.mark.parametrize("window, splits", [(None, 1), (None, 3), (10, 3)])
def test_matches_reference(window, splits):
    q, k, v, tables, lens = _pools()
    out = pd.paged_decode_attention_triton(q, k, v, tables, lens, 4, window, n_splits=splits)
    ref = paged_decode_attention_ref(q, k, v, tables, lens, 4, window)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_splits_do_not_change_the_answer_and_mqa_works():
    q, k, v, tables, lens = _pools(seed=1, block_size=16, n_blocks=12, h=8, h_kv=1, d=64, lens=(70, 3))
    one = pd.paged_decode_attention_triton(q, k, v, tables, lens, 16, n_splits=1)
    many = pd.paged_decode_attention_triton(q, k, v, tables, lens, 16, n_splits=4)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one, paged_decode_attention_ref(q, k, v, tables, lens, 16), atol=1e-5, rtol=1e-5)


def test_default_splits_fill_the_gpu_but_keep_long_splits():
    assert pd.default_splits(8192, 1, 8, n_sms=132) == 32  # batch 1: 8 heads x 32 splits ~ 2 waves
    assert pd.default_splits(8192, 64, 8, n_sms=132) == 1  # a full batch already fills the SMs
    assert pd.default_splits(300, 1, 8, n_sms=132) == 2  # never under 256 keys a split


def test_bad_head_dim_is_a_clear_error():
    q, k, v, tables, lens = _pools(d=24)
    with pytest.raises(ValueError, match="head dim"):
        pd.paged_decode_attention_triton(q, k, v, tables, lens, 4)
