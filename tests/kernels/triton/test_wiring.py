"""The models' CUDA paths, run here: `use_triton` is pointed at the interpreter so a CPU forward
takes exactly the branches a CUDA forward takes (flash attention, fused RoPE/RMSNorm/SwiGLU, the
SSD scan and step, the quantized matmul, the engine's paged decode), and the result must equal the
same model on its PyTorch paths. Plus: on the CPU, with Triton installed, nothing changes."""

import pytest
import torch

from hybridlm.cache import Cache
from hybridlm.engine import Engine, EngineConfig, RequestParams
from hybridlm.kernels import triton_support
from tests.generation.conftest import random_decoder

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA machines run the real paths (tests/test_gpu.py)")


@pytest.fixture
def kernels_on(monkeypatch):
    """Every model switch says yes wherever the interpreter can run the kernels; records the calls."""
    calls = []

    def use(t):
        ok = triton_support.runs_on(t)
        if ok:
            calls.append(t.shape)
        return ok

    monkeypatch.setattr(triton_support, "use_triton", use)
    return calls


def _loss_and_grads(model, ids):
    model.zero_grad()
    logits = model(ids)
    loss = logits.float().logsumexp(-1).mean()
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("preset, overrides", [
    ("llama-tiny", dict(n_layers=1)),  # RoPE, RMSNorm, SwiGLU, GQA: flash causal
    ("mistral-tiny", dict(n_layers=1, sliding_window=8)),  # the window rebuilt from indices by flash
])
def test_training_forward_and_backward_match_pytorch_paths(preset, overrides, kernels_on):
    model = random_decoder(preset, std=0.05, **overrides).train()
    ids = torch.randint(0, 1024, (1, 24), generator=torch.Generator().manual_seed(0))
    logits, grads = _loss_and_grads(model, ids)
    assert kernels_on, "the CUDA branches were not taken"
    triton_support.use_triton = lambda t: False  # undone by monkeypatch with the fixture
    ref_logits, ref_grads = _loss_and_grads(model, ids)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-4, rtol=1e-3, msg=name)


def test_hybrid_prefill_and_decode_match_pytorch_paths(kernels_on):
    model = random_decoder("nemotron-h-tiny", std=0.05, layer_pattern="M*M")
    ids = torch.randint(0, 1024, (1, 21), generator=torch.Generator().manual_seed(1))

    def run():
        cache = Cache(model.config, 1, max_len=32)
        with torch.no_grad():
            prefill = model(ids[:, :20], cache)  # chunked scan (chunks of 16: one full, one partial)
            step = model(ids[:, 20:], cache)  # one token: the SSD step
        return prefill, step

    fast = run()
    assert kernels_on
    triton_support.use_triton = lambda t: False
    for a, b in zip(fast, run()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_quant_linear_takes_the_triton_kernel_unless_ref_was_asked(kernels_on, monkeypatch):
    from hybridlm.kernels import qmatmul_triton
    from hybridlm.nn.quant.formats import QuantizedWeight, pack_int4
    from hybridlm.nn.quant.linear import QuantLinear, quant_linear_ref

    g = torch.Generator().manual_seed(0)
    w = QuantizedWeight("int4", pack_int4(torch.randint(0, 16, (32, 64), dtype=torch.uint8, generator=g)),
                        (torch.rand(32, 2, generator=g) * 0.1).half(), 32, 64)
    layer = QuantLinear(w, torch.randn(32, generator=g), kernel="ref")
    layer.requested = "auto"  # what set_kernel("auto") leaves on CUDA weights: kernel "ref", not asked for
    x = torch.randn(3, 64, generator=g)
    torch.testing.assert_close(layer(x), quant_linear_ref(x, w, layer.bias), atol=1e-4, rtol=1e-4)
    assert kernels_on
    forced = QuantLinear(w, None, kernel="ref")
    monkeypatch.setattr(qmatmul_triton, "qlinear_triton", lambda *a: pytest.fail("ref was asked for"))
    forced(x)


def test_engine_triton_paged_attention_generates_what_ref_does():
    model = random_decoder("llama-tiny", n_layers=2)
    prompts = [[5, 9, 200, 31, 7], list(range(40, 61))]
    params = RequestParams(max_tokens=5, temperature=0, ignore_eos=True)
    outs = {}
    for impl in ("triton", "ref"):
        engine = Engine(model, None, EngineConfig(kv_memory=1 << 20, max_num_seqs=4, block_size=4, attention=impl))
        outs[impl] = [o.token_ids for o in engine.generate(prompts, params)]
    assert outs["triton"] == outs["ref"]


def test_cpu_models_never_take_the_triton_paths(monkeypatch):
    from hybridlm.kernels import flash_attn, fused_ops

    assert triton_support.installed()
    assert not triton_support.use_triton(torch.zeros(1))
    for mod, name in ((flash_attn, "flash_attn"), (fused_ops, "rms_norm_triton"), (fused_ops, "swiglu_triton"),
                      (fused_ops, "rope_triton")):
        monkeypatch.setattr(mod, name, lambda *a, **k: pytest.fail("a Triton kernel ran on the CPU path"))
    model = random_decoder("llama-tiny", n_layers=1)
    with torch.no_grad():
        model(torch.randint(0, 1024, (1, 8)))
