import math

import pytest
import torch

from hybridlm.generation.processors import (apply_repetition_penalty, apply_temperature, min_p_filter, seen_mask,
                                            top_k_filter, top_p_filter)

INF = float("inf")
# probabilities 0.5, 0.3, 0.15, 0.05 (shuffled, so the filters must sort)
PROBS = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
LOGITS = PROBS.log()


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_temperature_divides():
    torch.testing.assert_close(apply_temperature(torch.tensor([[2.0, -4.0]]), 2.0), torch.tensor([[1.0, -2.0]]))


@pytest.mark.parametrize("k, expected", [(1, [1]), (2, [1, 3]), (3, [0, 1, 3]), (4, [0, 1, 2, 3]), (99, [0, 1, 2, 3])])
def test_top_k_keeps_the_k_largest(k, expected):
    out = top_k_filter(LOGITS, k)
    assert kept(out) == expected
    torch.testing.assert_close(out[0, expected], LOGITS[0, expected])  # survivors untouched


@pytest.mark.parametrize("p, expected", [
    (0.3, [1]),  # 0.5 alone already covers 0.3
    (0.49, [1]),
    (0.51, [1, 3]),  # 0.5 falls just short
    (0.75, [1, 3]),  # 0.5 + 0.3 >= 0.75
    (0.85, [0, 1, 3]),  # 0.5 + 0.3 < 0.85 <= 0.5 + 0.3 + 0.15
    (1.0, [0, 1, 2, 3]),
])
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    assert kept(top_p_filter(LOGITS, p)) == expected


@pytest.mark.parametrize("min_p, expected", [
    (0.0, [0, 1, 2, 3]),
    (0.2, [0, 1, 3]),  # threshold 0.1 drops 0.05
    (0.5, [1, 3]),  # threshold 0.25 drops 0.15
    (0.7, [1]),  # threshold 0.35
    (1.0, [1]),  # only the top token reaches the top probability
])
def test_min_p_drops_tokens_below_the_scaled_top_probability(min_p, expected):
    assert kept(min_p_filter(LOGITS, min_p)) == expected


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0, 0.5, -3.0]]))
    assert torch.equal(logits, torch.tensor([[2.0, -1.0, 0.5, -3.0]]))  # pure: the input is untouched


def test_seen_mask_marks_each_rows_tokens():
    mask = seen_mask([[1, 3, 3], [0], []], 5)
    expected = torch.tensor([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_filters_keep_the_top_token_of_every_row():
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(1)) * 5
    top = logits.argmax(-1)
    for out in (top_k_filter(logits, 1), top_p_filter(logits, 1e-6), min_p_filter(logits, 1.0)):
        assert torch.equal(out.argmax(-1), top)
        assert torch.isfinite(out.gather(1, top[:, None])).all()


# ---- the same answers as transformers' processors, on random logits -------------------------------

@pytest.fixture(scope="module")
def random_logits():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(8, 500, generator=generator) * 3


def assert_same_filter(ours: torch.Tensor, theirs: torch.Tensor):
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 5, 50, 499, 500])
def test_top_k_matches_transformers(random_logits, k):
    from transformers import TopKLogitsWarper

    assert_same_filter(top_k_filter(random_logits, k), TopKLogitsWarper(k)(None, random_logits.clone()))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.6, 0.9, 0.99])
def test_top_p_matches_transformers(random_logits, p):
    from transformers import TopPLogitsWarper

    assert_same_filter(top_p_filter(random_logits, p), TopPLogitsWarper(p)(None, random_logits.clone()))


@pytest.mark.parametrize("min_p", [0.01, 0.05, 0.2, 0.6])
def test_min_p_matches_transformers(random_logits, min_p):
    from transformers import MinPLogitsWarper

    assert_same_filter(min_p_filter(random_logits, min_p), MinPLogitsWarper(min_p)(None, random_logits.clone()))


@pytest.mark.parametrize("temperature", [0.3, 0.7, 1.5])
def test_temperature_matches_transformers(random_logits, temperature):
    from transformers import TemperatureLogitsWarper

    theirs = TemperatureLogitsWarper(temperature)(None, random_logits.clone())
    torch.testing.assert_close(apply_temperature(random_logits, temperature), theirs, rtol=0, atol=0)


@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(random_logits, penalty):
    from transformers import RepetitionPenaltyLogitsProcessor

    generator = torch.Generator().manual_seed(2)
    input_ids = torch.randint(0, random_logits.shape[1], (random_logits.shape[0], 40), generator=generator)
    theirs = RepetitionPenaltyLogitsProcessor(penalty)(input_ids, random_logits.clone())
    ours = apply_repetition_penalty(random_logits, seen_mask(input_ids.tolist(), random_logits.shape[1]), penalty)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert not torch.equal(ours, random_logits)


def test_probabilities_of_hand_made_logits_are_what_the_tests_assume():
    assert math.isclose(LOGITS.softmax(-1)[0, 1].item(), 0.5, rel_tol=1e-6)


def test_presence_and_frequency_penalties_follow_openais_formula():
    from hybridlm.generation.processors import apply_presence_frequency_penalty

    logits = torch.tensor([[1.0, 2.0, -1.0, 0.5]])
    counts = torch.tensor([[0, 1, 3, 0]])
    out = apply_presence_frequency_penalty(logits, counts, presence=0.5, frequency=0.25)
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0 - 0.5 - 0.25, -1.0 - 0.5 - 0.75, 0.5]]))
    assert torch.equal(logits, torch.tensor([[1.0, 2.0, -1.0, 0.5]]))  # input untouched
