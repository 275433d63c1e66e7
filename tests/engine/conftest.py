"""Models and helpers shared by the engine tests."""

from __future__ import annotations

import pytest
import torch

from hybridlm.engine import Engine, EngineConfig, RequestParams
from hybridlm.generation import SamplingConfig, generate
from tests.generation.conftest import random_decoder

GREEDY = RequestParams(max_tokens=8, temperature=0, ignore_eos=True)


def prompts_of(lengths, vocab: int = 1024, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def alone(model, prompt: list[int], max_tokens: int) -> list[int]:
    """The reference: greedy tokens of the prompt generated alone by `generate`."""
    return generate(model, [prompt], SamplingConfig(max_new_tokens=max_tokens, temperature=0, ignore_eos=True)).tokens[0]


def small_engine(model, tokenizer=None, **overrides) -> Engine:
    settings = dict(kv_memory=2 << 20, max_num_seqs=8, max_num_batched_tokens=48, long_prefill=16)
    return Engine(model, tokenizer, EngineConfig(**{**settings, **overrides}))


def run(engine: Engine, arrivals: dict[int, list[tuple[str, list[int], RequestParams]]], max_steps: int = 10_000):
    """Step the engine, adding requests at the steps given; returns {request id: StepOutputs}."""
    outs: dict[str, list] = {}
    step = 0
    while step <= max(arrivals, default=0) or engine.has_unfinished():
        for rid, prompt, params in arrivals.get(step, []):
            engine.add_request(prompt, params, request_id=rid)
        for out in engine.step():
            outs.setdefault(out.request_id, []).append(out)
        step += 1
        assert step < max_steps, "the engine did not finish"
    return outs


def tokens_of(outs) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a machine loaded by other work OpenMP's
    spin-waiting made these tests ~20x slower with two (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def dense():
    return random_decoder("llama-tiny")


@pytest.fixture(scope="session")
def hybrid():
    return random_decoder("nemotron-h-tiny")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf):
    from hybridlm.checkpoints.gguf import read_gguf_tokenizer

    return read_gguf_tokenizer(smollm2_gguf)
