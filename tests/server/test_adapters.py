"""`serve --adapter NAME=DIR`: the OpenAI `model` field picks the base or a LoRA adapter per request."""

import pytest
import torch

from tests.server.conftest import LiveServer, tiny_model


@pytest.fixture(scope="module")
def adapter_server(tiny_tokenizer, tmp_path_factory):
    from hybridlm.engine import EngineConfig
    from hybridlm.finetune.lora import LoraConfig, apply_lora
    from hybridlm.finetune.peft_format import adapter_copy, save_adapter
    from hybridlm.server.config import ServeConfig
    from hybridlm.server.main import build_context

    base = tiny_model("llama-tiny", tiny_tokenizer.vocab_size)
    trained = tiny_model("llama-tiny", tiny_tokenizer.vocab_size)
    lcfg = LoraConfig(r=4, targets=("q", "v", "down"))
    apply_lora(trained, lcfg)
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in trained.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("adapter") / "a"
    save_adapter(trained, lcfg, path)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    copy, _ = adapter_copy(base, path)
    assert {id(p) for p in base.parameters()} <= {id(p) for p in copy.parameters()}  # one set of base weights
    ctx = build_context(base, tiny_tokenizer, ServeConfig(model_name="tiny"),
                        EngineConfig(kv_memory=4 << 20, max_num_seqs=4, max_num_batched_tokens=128),
                        adapters={"tiny-ft": copy.eval()})
    server = LiveServer(ctx)
    yield server, base, trained.eval(), before
    server.stop()


def _greedy(model, tokenizer, prompt, n):
    from hybridlm.generation import SamplingConfig, generate

    with torch.no_grad():
        return generate(model, [tokenizer.encode(prompt)], SamplingConfig(max_new_tokens=n, temperature=0,
                                                                         ignore_eos=True)).tokens[0]


def test_model_field_picks_the_adapter(adapter_server, tiny_tokenizer):
    from openai import NotFoundError, OpenAI

    server, base, trained, before = adapter_server
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == ["tiny", "tiny-ft"]
    outs = {}
    for name, model in (("tiny", base), ("tiny-ft", trained)):
        r = client.completions.create(model=name, prompt="The list", max_tokens=8, temperature=0,
                                      extra_body={"ignore_eos": True})
        assert r.model == name
        outs[name] = r.choices[0].text
        assert r.choices[0].text == tiny_tokenizer.decode(_greedy(model, tiny_tokenizer, "The list", 8))
    assert outs["tiny"] != outs["tiny-ft"]
    with pytest.raises(NotFoundError) as info:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert "tiny-ft" in info.value.body["message"]
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # the base is untouched
