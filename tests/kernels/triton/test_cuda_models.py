"""On a GPU: the models with their Triton kernels equal the same models on PyTorch's paths
(triton_support.set_enabled(False)), in training and in generation, and the engine's Triton paged
attention generates what its gather path does. Skipped without CUDA (the CPU proves the same
branches under the interpreter in test_wiring.py)."""

import pytest
import torch

from hybridlm.engine import Engine, EngineConfig, RequestParams
from hybridlm.generation import SamplingConfig, generate
from hybridlm.kernels import triton_support
from tests.generation.conftest import random_decoder

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def switch():
    yield triton_support.set_enabled
    triton_support.set_enabled(True)


@pytest.mark.parametrize("preset", ["llama-tiny", "mistral-tiny", "nemotron-h-tiny"])
def test_training_step_matches_pytorch_paths(preset, switch):
    model = random_decoder(preset, std=0.05, **({"sliding_window": 16} if preset == "mistral-tiny" else {}))
    model = model.cuda().train()
    ids = torch.randint(0, 1024, (2, 64), device="cuda")

    def run():
        model.zero_grad()
        logits = model(ids)
        logits.float().logsumexp(-1).mean().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    switch(True)
    fast, fast_grads = run()
    switch(False)
    ref, ref_grads = run()
    torch.testing.assert_close(fast, ref, atol=2e-3, rtol=2e-3)
    for a, b in zip(fast_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-2)


@pytest.mark.parametrize("preset", ["llama-tiny", "nemotron-h-tiny"])
def test_bf16_greedy_generation_matches_pytorch_paths(preset, switch):
    model = random_decoder(preset).to("cuda", torch.bfloat16)
    prompts = [list(range(5, 45)), list(range(100, 107))]
    greedy = SamplingConfig(max_new_tokens=12, temperature=0, ignore_eos=True)
    switch(True)
    fast = generate(model, prompts, greedy, cache_kind="static").tokens
    switch(False)
    ref = generate(model, prompts, greedy, cache_kind="static").tokens
    # bf16: rounding may flip a near-tie late; the leading tokens must agree
    assert all(a[:4] == b[:4] for a, b in zip(fast, ref))


def test_engine_triton_paged_attention_matches_gather():
    model = random_decoder("llama-tiny").cuda()
    prompts = [[5, 9, 200, 31, 7], list(range(40, 90))]
    params = RequestParams(max_tokens=8, temperature=0, ignore_eos=True)
    outs = {}
    for impl in ("triton", "gather"):
        engine = Engine(model, None, EngineConfig(kv_memory=8 << 20, max_num_seqs=4, attention=impl))
        outs[impl] = [o.token_ids for o in engine.generate(prompts, params)]
    assert outs["triton"] == outs["gather"]
