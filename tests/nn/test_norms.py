import pytest
import torch

from hybridlm.nn.norms import RMSNorm, rms_norm_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_reference(dtype):
    norm = RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 7, 64) * 3
    expected = rms_norm_ref(x.to(dtype), norm.weight, 1e-6)
    got = norm(x.to(dtype))
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected)
