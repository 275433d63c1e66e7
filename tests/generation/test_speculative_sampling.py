"""Speculative sampling keeps the target's distribution exactly: on an 8-token vocabulary, the
sampled continuations follow the target's probabilities (enumerated exactly) by a chi-square test,
while the draft's own samples fail the same test (so the test can tell)."""

import itertools

import pytest
import torch

from hybridlm.generation import SamplingConfig, generate, process_logits
from hybridlm.generation.proposers import DraftModelProposer, PromptLookupProposer
from hybridlm.generation.speculative import speculative_generate

VOCAB = 8
N_NEW = 4  # tokens 2..4 come from one or two verification rounds (k = 2): accept, reject and bonus paths
N_SAMPLES = 8000  # rows of one batch, each an independent sample
PROMPT = [3, 1, 4, 1, 5, 2]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(make_decoder, seed, name="llama-tiny", std=0.05):
    """A very small random model over VOCAB tokens. std 0.05 spreads its distributions over several
    tokens (top probability ~0.4), so draft and target disagree often but not always."""
    small = dict(vocab_size=VOCAB, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, eos_token_id=None)
    if name.startswith("nemotron"):  # every row keeps a Mamba state per verified token: keep them small
        small.update(head_dim=16, mamba_n_heads=4, mamba_head_dim=16, d_state=8)
    else:
        small.update(n_layers=2)
    return make_decoder(name, std=std, seed=seed, **small)


def exact_distribution(model, sampling) -> torch.Tensor:
    """P(t_2, t_3, t_4) after PROMPT under `sampling`, as (V, V, V): every continuation enumerated."""
    conts = torch.tensor(list(itertools.product(range(VOCAB), repeat=N_NEW)))  # (V^4, 4)
    ids = torch.cat((torch.tensor(PROMPT).expand(len(conts), -1), conts), dim=1)
    with torch.no_grad():
        logits = model(ids)[:, len(PROMPT) - 1:-1]  # (V^4, 4, V): before each new token
    probs = process_logits(logits.reshape(-1, VOCAB).float(), sampling).softmax(-1).view(len(conts), N_NEW, VOCAB)
    joint = probs.gather(-1, conts[..., None])[..., 0].prod(-1).view((VOCAB,) * N_NEW)
    return joint.sum(0)  # marginalise the first token (it comes from the prefill, not a verification)


def chi_square_p_value(samples: list[list[int]], expected: torch.Tensor) -> float:
    """p-value of Pearson's test of the (t_2, t_3, t_4) counts against `expected` probabilities,
    pooling the cells expected fewer than 5 times into one."""
    counts = torch.zeros(expected.numel(), dtype=torch.float64)
    for row in samples:
        counts[(row[1] * VOCAB + row[2]) * VOCAB + row[3]] += 1
    want = expected.flatten().double() * len(samples)
    small = want < 5
    counts = torch.cat((counts[~small], counts[small].sum()[None]))
    want = torch.cat((want[~small], want[small].sum()[None]))
    keep = want > 0
    stat = ((counts[keep] - want[keep]) ** 2 / want[keep]).sum()
    dof = int(keep.sum()) - 1
    return torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2).item()


SAMPLINGS = [SamplingConfig(temperature=1.0, max_new_tokens=N_NEW, seed=11, eos_token_ids=()),
             SamplingConfig(temperature=0.7, top_k=5, top_p=0.9, max_new_tokens=N_NEW, seed=12, eos_token_ids=())]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["plain", "warped"])
def test_draft_model_sampling_matches_the_target_distribution(make_decoder, sampling):
    target, draft = tiny(make_decoder, seed=0), tiny(make_decoder, seed=1, name="nemotron-h-tiny")
    expected = exact_distribution(target, sampling)
    result = speculative_generate(target, DraftModelProposer(draft), [PROMPT] * N_SAMPLES, sampling, k=2)
    assert 0.2 < result.stats.acceptance_rate < 0.9  # rejections and residual samples really happen
    assert chi_square_p_value(result.tokens, expected) > 1e-3
    # the same test rejects the draft's own distribution: it has the power to see a wrong rule
    own = generate(draft, [PROMPT] * N_SAMPLES, sampling)
    assert chi_square_p_value(own.tokens, expected) < 1e-6


def test_hybrid_target_with_prompt_lookup_matches_the_target_distribution(make_decoder):
    sampling = SAMPLINGS[0]
    target = tiny(make_decoder, seed=2, name="nemotron-h-tiny", std=0.2)  # Mamba states rolled back per row
    expected = exact_distribution(target, sampling)
    result = speculative_generate(target, PromptLookupProposer(max_ngram=2), [PROMPT] * N_SAMPLES, sampling, k=2)
    assert result.stats.proposed > N_SAMPLES and 0.05 < result.stats.acceptance_rate < 0.9  # point-mass q
    assert chi_square_p_value(result.tokens, expected) > 1e-3
