import pytest
import torch

from hybridlm.generation import SamplingConfig, generate
from hybridlm.generation import compiled as compiled_module
from hybridlm.generation.compiled import compile_decoder
from hybridlm.nn.packed_linear import PackedLinear, pack_linears

GREEDY = SamplingConfig(temperature=0, max_new_tokens=12, ignore_eos=True)


def random_prompts(lengths, vocab=1024, seed=0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.slow  # inductor compiles a hybrid model's step: ~1 minute on 2 CPU cores
def test_compiled_hybrid_decode_gives_the_eager_tokens(make_decoder):
    model = make_decoder("nemotron-h-tiny")  # Mamba-2 slots: conv and SSM state updated in the graph
    prompts = random_prompts((7, 15))
    assert generate(compile_decoder(model), prompts, GREEDY, cache_kind="static").tokens == \
        generate(model, prompts, GREEDY, cache_kind="static").tokens


@pytest.mark.slow  # inductor compiles and autotunes every GEMM: ~1 minute on 2 CPU cores
def test_compiled_decode_gives_the_eager_tokens_and_logits(make_decoder):
    model = make_decoder("llama-tiny")
    compiled = compile_decoder(model)
    prompts = random_prompts((9, 30))  # left padding in the batch
    assert generate(compiled, prompts, GREEDY, cache_kind="static").tokens == \
        generate(model, prompts, GREEDY, cache_kind="static").tokens

    # step by step: compiled logits against eager ones over the same full-view cache layout; a
    # third prompt length must reuse the graph (the cache length is a dynamic dimension)
    ids = torch.tensor(random_prompts((17, 17), seed=1))
    with torch.inference_mode(), torch._dynamo.config.patch(error_on_recompile=True):
        eager_cache = model.new_cache(2, kind="static", max_len=40, full_view=True)
        compiled_cache = compiled.new_cache(2, max_len=40)
        expected, got = model(ids, eager_cache)[:, -1:], compiled(ids, compiled_cache)[:, -1:]
        for _ in range(8):
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
            token = expected[:, -1].argmax(-1, keepdim=True)
            expected, got = model(token, eager_cache), compiled(token, compiled_cache)


def test_prefill_runs_on_a_packed_copy_and_leaves_the_model_plain(make_decoder, monkeypatch):
    # "auto" packs only where packing measured faster on this machine; force it to test the copy
    monkeypatch.setattr(compiled_module, "pack_linears", lambda model, impl: pack_linears(model, "packed"))
    model = make_decoder("llama-tiny")
    compiled = compile_decoder(model)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert compiled.eager is not model and any(isinstance(m, PackedLinear) for m in compiled.eager.modules())
    assert compile_decoder(model, pack_prefill=False).eager is model
    # a prefill through the wrapper is the packed copy's, and equals the plain model's
    ids = torch.tensor(random_prompts((12,)))
    with torch.inference_mode():
        got = compiled(ids, compiled.new_cache(1, max_len=16))
        expected = model(ids, model.new_cache(1, kind="static", max_len=16, full_view=True))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_compile_refuses_what_it_cannot_compile_well(make_decoder):
    model = make_decoder("llama-tiny")
    with pytest.raises(ValueError, match="static cache"):
        compile_decoder(model).new_cache(1, kind="dynamic", max_len=16)
    with pytest.raises(ValueError, match="eval"):
        compile_decoder(make_decoder("llama-tiny").train())
    with pytest.raises(ValueError, match="MoE"):
        compile_decoder(make_decoder("mixtral-tiny"))
    pack_linears(model, "packed")
    with pytest.raises(ValueError, match="nn.Linear"):
        compile_decoder(model)
