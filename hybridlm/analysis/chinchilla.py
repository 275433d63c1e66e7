"""Compute-optimal training (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models").

Training compute is C = 6 N D FLOPs for N parameters and D tokens (2 N per token forward, 4 N
backward; Kaplan et al. 2020). For a budget C, Chinchilla's Approach 1 fits N_opt ∝ C^a and
D_opt ∝ C^b with a + b = 1, and finds a ≈ b ≈ 0.5: tokens should grow as fast as parameters,
about 20 per parameter. Its Table 3 projects that fit to model sizes from 400M (8.0B tokens) to
10T (216.2T tokens); tokens per parameter creep from 20.0 to 21.6 over that range, because the
fitted a is a hair under 0.5. `optimal_tokens` reproduces that table: D = 20 N (N / 400M)^(b/a - 1)
with a = 0.498, b = 0.502 (fitted to the table), inside the paper's confidence intervals (a in [0.488, 0.502],
b in [0.501, 0.512]); `tokens_rule_of_thumb` is the plain 20 N.
"""

from __future__ import annotations

from dataclasses import dataclass

TOKENS_PER_PARAMETER = 20.0  # the rule of thumb
_A, _B = 0.498, 0.502  # Approach 1 exponents: N_opt ∝ C^a, D_opt ∝ C^b (a + b = 1)
_ANCHOR_PARAMS = 400e6  # Table 3's first row: 400M parameters, 8.0B tokens (20 per parameter)


def training_flops(n_params: float, n_tokens: float) -> float:
    """C = 6 N D: forward (2 N) and backward (4 N) FLOPs per token, over D tokens."""
    return 6.0 * n_params * n_tokens


def tokens_rule_of_thumb(n_params: float) -> float:
    """About 20 training tokens per parameter."""
    return TOKENS_PER_PARAMETER * n_params


def optimal_tokens(n_params: float) -> float:
    """Compute-optimal training tokens for a model of n_params, per Chinchilla's Approach 1 fit
    (D ∝ N^(b/a)), anchored at 20 tokens per parameter at 400M parameters."""
    return TOKENS_PER_PARAMETER * n_params * (n_params / _ANCHOR_PARAMS) ** (_B / _A - 1.0)


@dataclass
class ChinchillaPoint:
    params: float  # N
    tokens: float  # compute-optimal D
    flops: float  # 6 N D

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params


def chinchilla(n_params: float) -> ChinchillaPoint:
    """The compute-optimal training run for a model of n_params: tokens and training FLOPs."""
    tokens = optimal_tokens(n_params)
    return ChinchillaPoint(n_params, tokens, training_flops(n_params, tokens))
