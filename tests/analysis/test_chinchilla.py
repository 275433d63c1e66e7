"""The Chinchilla helper against the table the EfficientML lecture shows (Hoffmann et al. 2022, Table 3)."""

import pytest

from hybridlm.analysis.chinchilla import chinchilla, tokens_rule_of_thumb, training_flops

# parameters, training FLOPs, tokens: the lecture's rows as printed
TABLE = [
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
]


@pytest.mark.parametrize("params, flops, tokens", TABLE)
def test_chinchilla_reproduces_the_table(params, flops, tokens):
    point = chinchilla(params)
    assert point.tokens == pytest.approx(tokens, rel=0.01)
    assert point.flops == pytest.approx(flops, rel=0.01)
    assert point.flops == training_flops(params, point.tokens)


def test_the_10b_row():
    point = chinchilla(10e9)
    assert round(point.tokens / 1e9, 0) == 205  # "205.1 Billion"
    assert f"{point.flops:.2e}" == "1.23e+22"


def test_the_67b_row_is_off_in_the_table_itself():
    # 5.76e23 / (6 x 67e9) = 1.43T tokens, not the 1.5T printed beside it: the row is rounded or
    # shifted in the source, so it is held to its FLOPs (3%) and not to its tokens
    assert 5.76e23 / training_flops(67e9, 1) == pytest.approx(1.43e12, rel=0.01)
    assert chinchilla(67e9).flops == pytest.approx(5.76e23, rel=0.03)


def test_about_20_tokens_per_parameter():
    for params, flops, tokens in TABLE:
        assert tokens_rule_of_thumb(params) == 20 * params
        assert 20 <= chinchilla(params).tokens_per_param < 22
        assert tokens_rule_of_thumb(params) == pytest.approx(tokens, rel=0.1)


def test_6nd():
    assert training_flops(7e9, 2e12) == pytest.approx(8.4e22)  # Llama-2-7B on 2T tokens
