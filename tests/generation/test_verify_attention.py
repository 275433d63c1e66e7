"""`decode_attention`: a forward of T tokens whose attention runs each query as a one-token step
gives bit for bit the logits of T one-token steps (the batched attention only comes close).

A float GEMM of T rows may round differently from T one-row products (BLAS picks its kernel by
shape), so these models run every Linear one row at a time, as the native quantized matmuls do
anyway: the test then isolates attention. SmolLM2 Q4 end to end: tests/generation/test_speculative.py.
"""

import functools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hybridlm.generation.verify_attention import decode_attention
from tests.generation.conftest import random_decoder


class RowByRow(nn.Module):
    """A Linear computed one token at a time: the same products whatever T is."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x):
        rows = x.reshape(-1, 1, x.shape[-1])
        return torch.cat([F.linear(r, self.weight, self.bias) for r in rows]).view(*x.shape[:-1], -1)


def row_by_row_decoder(preset, **overrides):
    model = random_decoder(preset, **overrides)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Linear:
                setattr(module, name, RowByRow(child))
    return model


pytestmark = pytest.mark.usefixtures("one_thread")


def verify_and_step(model, prompts, new, kind="dynamic", decode=True):
    """Logits of `new` (B, T) fed as one forward (with decode_attention when `decode`) and as T
    one-token steps, each after the same left-padded prompts."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    padded = mask if not bool(mask.all()) else None
    outs = []
    with torch.inference_mode():
        for one_forward in (True, False):
            cache = model.new_cache(len(prompts), kind=kind, max_len=width + new.shape[1], window_only=False)
            model(ids, cache, attention_mask=padded, last_only=True)
            if one_forward:
                if decode:
                    cache.attend_for = functools.partial(decode_attention, model.config)
                outs.append(model(new, cache))
            else:
                outs.append(torch.cat([model(new[:, i:i + 1], cache) for i in range(new.shape[1])], dim=1))
    return outs


@pytest.mark.parametrize("preset, overrides", [("llama-tiny", {}), ("llama-tiny", {"attn_impl": "ref"}),
                                               ("gpt2-tiny", {}), ("mistral-tiny", {"sliding_window": 24})])
@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_verification_equals_one_token_steps_bit_for_bit(preset, overrides, kind):
    model = row_by_row_decoder(preset, **overrides)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 1024, (20,), generator=gen).tolist()
    new = torch.randint(0, 1024, (1, 7), generator=gen)  # mistral: keys 21..27 cross the window of 24
    verified, stepped = verify_and_step(model, [prompt], new, kind)
    assert torch.equal(verified, stepped)


def test_padded_batch_verification_equals_its_steps():
    """Padding makes every step masked: each query then gets the rows of the mask its step had."""
    model = row_by_row_decoder("llama-tiny")
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 1024, (n,), generator=gen).tolist() for n in (9, 16)]
    new = torch.randint(0, 1024, (2, 5), generator=gen)
    verified, stepped = verify_and_step(model, prompts, new)
    assert torch.equal(verified, stepped)


def test_batched_attention_is_only_close():
    """Why the decode path exists: the one-call attention agrees to float rounding, not to the bit
    (if this starts failing because they agree exactly, decode_attention is no longer needed)."""
    model = row_by_row_decoder("llama-tiny", std=0.05)
    gen = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 1024, (300,), generator=gen).tolist()
    verified, stepped = verify_and_step(model, [prompt], torch.randint(0, 1024, (1, 6), generator=gen), decode=False)
    torch.testing.assert_close(verified, stepped, rtol=1e-4, atol=1e-4)
    assert not torch.equal(verified, stepped), "batched attention now matches one-token steps exactly"


def test_one_token_steps_and_alibi_keep_their_own_path():
    model = random_decoder("llama-tiny")
    cache = model.new_cache(1)
    one = cache.plan(1)
    assert decode_attention(model.config, cache, one) is None
    assert decode_attention(model.config.replace(position="alibi"), cache, cache.plan(3)) is None
