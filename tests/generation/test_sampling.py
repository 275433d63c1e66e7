import pytest
import torch

from hybridlm.generation.sampling import SamplingConfig, make_generator, next_tokens, process_logits


@pytest.mark.parametrize("changes, message", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=-3), "max_new_tokens"),
    (dict(max_new_tokens=2.0), "max_new_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=1.5), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(min_p=1.5), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(seed=1.0), "seed"),
    (dict(seed=True), "seed"),
    (dict(stop=""), "stop"),
    (dict(stop=["ok", ""]), "stop"),
    (dict(stop=[3]), "stop"),
    (dict(eos_token_ids=[-1]), "eos_token_ids"),
    (dict(eos_token_ids="2"), "eos_token_ids"),
    (dict(ignore_eos=1), "ignore_eos"),
])
def test_invalid_fields_raise_one_line_errors(changes, message):
    with pytest.raises(ValueError, match=message) as info:
        SamplingConfig(**changes)
    assert "\n" not in str(info.value)


def test_sequences_are_stored_as_tuples():
    cfg = SamplingConfig(stop=["\n\n", "END"], eos_token_ids=[2, 7])
    assert cfg.stop == ("\n\n", "END") and cfg.eos_token_ids == (2, 7)
    assert SamplingConfig(eos_token_ids=5).eos_token_ids == (5,)
    hash(cfg)
    with pytest.raises(ValueError, match="max_new_tokens"):
        cfg.replace(max_new_tokens=0)  # replace re-validates


def test_greedy_is_the_argmax_even_with_warpers():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    cfg = SamplingConfig(temperature=0, top_k=3, top_p=0.2, min_p=0.5)
    assert torch.equal(next_tokens(logits, cfg, None), logits.argmax(-1))


def test_repetition_penalty_applies_to_greedy_too():
    logits = torch.tensor([[3.0, 2.0, 1.0]])
    seen = torch.tensor([[True, False, False]])
    assert next_tokens(logits, SamplingConfig(temperature=0, repetition_penalty=2.0), None, seen).item() == 1
    with pytest.raises(ValueError, match="seen"):
        process_logits(logits, SamplingConfig(repetition_penalty=2.0))


def test_sampling_follows_the_processed_distribution():
    # two tokens survive top-k (probabilities 0.6 and 0.3 before, 2/3 and 1/3 after renormalising)
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = probs.log().expand(20000, 3)
    tokens = next_tokens(logits, SamplingConfig(top_k=2), make_generator(0))
    freq = torch.bincount(tokens, minlength=3).float() / tokens.numel()
    torch.testing.assert_close(freq, torch.tensor([2 / 3, 1 / 3, 0.0]), atol=0.015, rtol=0)


def test_seeded_generator_is_reproducible_and_leaves_the_global_rng_alone():
    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(0))
    cfg = SamplingConfig(temperature=1.5)
    state = torch.get_rng_state()
    draws = [torch.cat([next_tokens(logits, cfg, g) for _ in range(10)]) for g in (make_generator(7), make_generator(7))]
    other = torch.cat([next_tokens(logits, cfg, g) for g in [make_generator(8)] for _ in range(10)])
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], other)
