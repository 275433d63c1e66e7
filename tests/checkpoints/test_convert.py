"""`convert`: the real GGUF becomes an HF directory that transformers and hybridlm both load."""

import pytest
import torch

from hybridlm.checkpoints.convert import convert_gguf_to_hf
from hybridlm.checkpoints.registry import load_model


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "smollm2-hf"
    convert_gguf_to_hf("smollm2-135m", out)
    return out


def test_converted_directory_loads_in_transformers_with_the_same_logits(converted):
    import transformers
    ours = load_model("smollm2-135m")
    text = "The KV cache stores the keys and values of earlier tokens so that"
    ids = ours.tokenizer.encode(text)
    hf_tok = transformers.AutoTokenizer.from_pretrained(converted)
    assert hf_tok(text)["input_ids"] == ids
    hf = transformers.AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = ours.model(torch.tensor([ids]))
        got = hf(torch.tensor([ids])).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == \
        ours.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=False)


def test_converted_directory_loads_in_hybridlm(converted):
    from_dir, from_gguf = load_model(converted), load_model("smollm2-135m")
    assert from_dir.format == "hf" and from_dir.model.config.to_dict() == from_gguf.model.config.to_dict()
    for (name, a), b in zip(from_dir.model.state_dict().items(), from_gguf.model.state_dict().values()):
        assert torch.equal(a, b), name
