"""The GPU benchmarks refuse cleanly where there is no CUDA device: one line naming the reason and
exit status 2, before touching a kernel (their figures come from scripts/gpu_check.sh on a GPU)."""

import pytest
import torch

from bench import gpu_attention, gpu_decode, gpu_kernels, gpu_ssd


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine runs them for real")
@pytest.mark.parametrize("bench", [gpu_attention, gpu_ssd, gpu_kernels, gpu_decode])
def test_exits_with_a_clear_message_without_cuda(bench, capsys):
    assert bench.main([]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "gpu_check.sh" in err
