"""T5's relative position buckets against transformers' own function, and the bias's shape."""

import pytest
import torch

from hybridlm.config import ModelConfig
from hybridlm.nn.relative_bias import RelativePositionBias, relative_bucket

T5Attention = pytest.importorskip("transformers.models.t5.modeling_t5").T5Attention


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("n_buckets, max_distance", [(32, 128), (8, 20)])
def test_buckets_match_transformers(bidirectional, n_buckets, max_distance):
    distance = torch.arange(-300, 301)[None, :] * torch.ones(3, 1, dtype=torch.long)
    ours = relative_bucket(distance, bidirectional, n_buckets, max_distance)
    ref = T5Attention._relative_position_bucket(distance, bidirectional, n_buckets, max_distance)
    assert torch.equal(ours, ref)
    assert ours.min() >= 0 and ours.max() < n_buckets


def test_bias_is_per_head_and_depends_only_on_distance():
    cfg = ModelConfig(family="encoder", position="relative", d_model=32, n_heads=4, relative_buckets=8)
    bias = RelativePositionBias(cfg, bidirectional=True)
    torch.nn.init.normal_(bias.embed.weight)
    pos = torch.arange(6)[None]
    b = bias(pos, pos)
    assert b.shape == (1, 4, 6, 6)
    shifted = bias(pos + 5, pos + 5)
    torch.testing.assert_close(b, shifted)  # only k - q matters
    assert not torch.equal(b[0, :, 0, 1], b[0, :, 1, 0])  # bidirectional: ahead and behind differ
