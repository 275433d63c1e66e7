"""`hybridlm generate --speculative`: the same greedy text as without, acceptance on stderr."""

import json

import pytest
from pydoc_data.topics import topics

QUOTE = f"{topics['pass'].strip()}\n\nQuote the first sentence above exactly."
# exact activations: with int8 activations ("fast", the default) a float-rounding difference between
# a 4-token verification and 4 one-token steps flips activation codes and can change a greedy token
# (measured: logits 0.59 apart, vs 3.5e-5 with exact), so token equality is asserted in exact mode
GREEDY = ["--temperature", "0", "--max-new-tokens", "24", "--json", "--chat", "--quant-act", "exact"]


@pytest.mark.slow  # three runs of SmolLM2 through the CLI: ~20 s on a quiet 2-core machine
def test_speculative_generate_gives_the_plain_greedy_tokens(cli):
    code, out, _ = cli("generate", "smollm2-135m", QUOTE, *GREEDY)
    assert code == 0
    plain = json.loads(out)["token_ids"]
    for spec in ("prompt-lookup", "draft:blocks:40"):
        code, out, err = cli("generate", "smollm2-135m", QUOTE, *GREEDY, "--speculative", spec,
                             "--num-speculative-tokens", "3")
        assert code == 0, err
        report = json.loads(out)
        assert report["token_ids"] == plain
        assert "acceptance_rate" in report and f"speculative {spec}, k=3: accepted" in err
    assert report["acceptance_rate"] > 0  # the draft made of 20 of 30 layers is right sometimes


def test_bad_speculative_options_are_one_line_errors(cli, assert_one_line_error):
    # all refused before the model loads: a missing model file would otherwise be the error
    missing = "no-such-model.gguf"
    assert_one_line_error(*cli("generate", missing, "Hi", "--speculative", "guess"), "speculative spec")
    assert_one_line_error(*cli("generate", missing, "Hi", "--speculative", "prompt-lookup:0"), "n-gram")
    assert_one_line_error(*cli("generate", missing, "Hi", "--speculative", "draft:blocks:x"), "number of blocks")
    assert_one_line_error(*cli("generate", missing, "Hi", "--speculative", "prompt-lookup", "--compile"),
                          "drop --compile")
    assert_one_line_error(*cli("generate", missing, "Hi", "--speculative", "prompt-lookup",
                               "--num-speculative-tokens", "0"), "--num-speculative-tokens", "at least 1")
