"""The engine on the real SmolLM2-135M: staggered greedy requests equal `generate` alone."""

import pytest

from hybridlm.engine import Engine, EngineConfig, RequestParams
from tests.engine.conftest import alone, run, tokens_of


@pytest.fixture(scope="module")
def smollm2():
    from hybridlm.checkpoints.registry import load_model

    lm = load_model("smollm2-135m")
    return lm.model.eval(), lm.tokenizer


def test_smollm2_staggered_requests_equal_generate_alone(smollm2):
    model, tok = smollm2
    system = ("<|im_start|>system\nYou are a helpful assistant. Answer in one short sentence, plainly, "
              "without lists.<|im_end|>\n")
    questions = ["What is the capital of France?", "Name a prime number.", "Say hello."]
    prompts = [tok.encode(system + f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n") for q in questions]
    engine = Engine(model, tok, EngineConfig(kv_memory=64 << 20, max_num_seqs=4, max_num_batched_tokens=64,
                                             long_prefill=24))
    params = RequestParams(max_tokens=6, temperature=0, ignore_eos=True)
    outs = run(engine, {0: [("a", prompts[0], params)], 1: [("b", prompts[1], params)],
                        3: [("c", prompts[2], params)]})
    for rid, prompt in zip("abc", prompts):
        tokens = tokens_of(outs[rid])
        assert tokens == alone(model, prompt, 6), rid
        assert "".join(o.text_delta for o in outs[rid]) == tok.decode(tokens, skip_special_tokens=True)
    # the shared system prompt's full blocks came from the prefix cache for the later requests
    common = next(i for i, (x, y, z) in enumerate(zip(*prompts)) if not x == y == z)
    shared = common // 16 * 16
    assert shared >= 16 and outs["b"][-1].cached_tokens == shared and outs["c"][-1].cached_tokens == shared
    assert engine.pool.n_used == 0
