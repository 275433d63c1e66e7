"""The same code on CUDA: skipped cleanly on machines without a GPU."""

import pytest
import torch

from hybridlm.generation import SamplingConfig, generate
from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("name", ["llama-tiny", "mistral-tiny", "gpt2-tiny"])
def test_cuda_float32_matches_cpu(name):
    torch.manual_seed(0)
    cpu = Decoder(get_preset(name)).eval()
    gpu = Decoder(get_preset(name)).eval().cuda()
    gpu.load_state_dict(cpu.state_dict())
    ids = torch.randint(0, 1024, (2, 40))
    with torch.inference_mode():
        torch.testing.assert_close(gpu(ids.cuda()).cpu(), cpu(ids), atol=1e-4, rtol=1e-4)
    greedy = SamplingConfig(max_new_tokens=16, temperature=0)
    prompts = [ids[0, :10].tolist(), ids[1, :25].tolist()]
    for kind in ("static", "dynamic"):
        assert generate(gpu, prompts, greedy, cache_kind=kind).tokens == generate(cpu, prompts, greedy).tokens


def test_cuda_bfloat16_runs_and_keeps_rope_in_float32():
    model = Decoder(get_preset("qwen3-tiny")).eval().to("cuda", torch.bfloat16)
    assert model.rope_inv_freq.dtype == torch.float32
    out = generate(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=8, temperature=0), cache_kind="static")
    assert len(out.tokens[0]) > 0
