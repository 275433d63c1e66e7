"""Fixtures the HF checkpoint tests share: tiny saved HF models, random prompts,
greedy and logit parity.

A test module using `saved` defines `make_hf_model(case)` (a tiny random transformers model) and may
define `max_shard_size(case)` to save that case sharded; `random_ids` reads the module's VOCAB.
"""

import pytest
import torch
import transformers


@pytest.fixture(scope="module")
def saved(tmp_path_factory, request):
    """case -> (HF model, the directory it was saved to); built once per case and module."""
    module, cache = request.module, {}

    def get(case):
        if case not in cache:
            model = module.make_hf_model(case)
            path = tmp_path_factory.mktemp(case)
            shard = getattr(module, "max_shard_size", lambda _: "2GB")(case)
            model.save_pretrained(path, max_shard_size=shard)
            cache[case] = model, path
        return cache[case]

    return get


@pytest.fixture(scope="module")
def random_ids(request):
    """random_ids(seed=1, batch=2, n=24) -> (batch, n) token ids below the module's VOCAB."""
    vocab = request.module.VOCAB

    def make(seed: int = 1, batch: int = 2, n: int = 24) -> torch.Tensor:
        return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))

    return make


def _greedy_by_recompute(model, ids: torch.Tensor, n_new: int) -> torch.Tensor:
    """Greedy decoding by full recompute: obviously right, independent of any cache."""
    for _ in range(n_new):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def _assert_greedy_matches_hf(hf_model, ours, prompt: torch.Tensor, n_new: int = 32) -> None:
    hf_model.generation_config.eos_token_id = None  # never stop early
    with torch.no_grad():
        hf_out = hf_model.generate(prompt, do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
                                   pad_token_id=0, attention_mask=torch.ones_like(prompt))
        assert hf_out.shape[1] == prompt.shape[1] + n_new
        assert torch.equal(_greedy_by_recompute(ours, prompt, n_new), hf_out)


@pytest.fixture(scope="session")
def assert_greedy_matches_hf():
    """assert_greedy_matches_hf(hf_model, ours, prompt, n_new=32): transformers' greedy `generate`
    and ours by full recompute give the same n_new tokens."""
    return _assert_greedy_matches_hf


def _assert_hf_reload_matches(out, hf_model, ids: torch.Tensor):
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is type(hf_model)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, hf_model(ids).logits, atol=1e-4, rtol=0)
    return reloaded


@pytest.fixture(scope="session")
def assert_hf_reload_matches():
    """assert_hf_reload_matches(out, hf_model, ids) -> the model transformers loads from `out`: it is
    hf_model's class and gives its logits on ids (1e-4)."""
    return _assert_hf_reload_matches
