import json

import pytest
import torch

from hybridlm.finetune.data import DataError, ExampleSet, collate, encode_record, load_sft, pack, to_example
from hybridlm.finetune.sft import SFTObjective
from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset
from hybridlm.train.objectives import IGNORE

CONVERSATION = {"messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "What is a tuple?"},
                             {"role": "assistant", "content": "An immutable sequence."},
                             {"role": "user", "content": "And a list?"},
                             {"role": "assistant", "content": "A mutable one."}]}


def test_only_assistant_tokens_are_targets(chat_tokenizer):
    ids, trained = encode_record(chat_tokenizer, CONVERSATION, "x")
    full = chat_tokenizer.apply_chat_template(CONVERSATION["messages"], add_generation_prompt=False)
    assert chat_tokenizer.decode(ids) == full
    learned = chat_tokenizer.decode([i for i, t in zip(ids, trained) if t])
    assert learned == "An immutable sequence.<|im_end|>\nA mutable one.<|im_end|>\n"
    ids, trained = encode_record(chat_tokenizer, {"prompt": "2 + 2 =", "completion": " 4"}, "x")
    assert chat_tokenizer.decode([i for i, t in zip(ids, trained) if t]) == " 4<|im_end|>"
    pair = {"prompt": CONVERSATION["messages"][:2], "completion": CONVERSATION["messages"][2:3]}
    ids, trained = encode_record(chat_tokenizer, pair, "x")
    assert chat_tokenizer.decode([i for i, t in zip(ids, trained) if t]) == "An immutable sequence.<|im_end|>\n"


def test_no_gradient_flows_from_prompt_tokens(chat_tokenizer):
    torch.manual_seed(0)
    model = Decoder(get_preset("llama-tiny", vocab_size=chat_tokenizer.vocab_size))
    x, y = to_example(*encode_record(chat_tokenizer, CONVERSATION, "x"), seq_len=256)
    batch = collate([[(x, y)]], 0, packed=False)
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["logits"] = output

    hook = model.lm_head.register_forward_hook(keep)
    SFTObjective().loss(model, batch).backward()
    hook.remove()
    grad = captured["logits"].grad[0].abs().amax(-1)  # (T,): how much each position's logits move the loss
    target = batch.targets[0] != IGNORE
    assert target.sum() > 0 and (~target).sum() > target.sum()  # system and user turns are most of it
    assert grad[~target].max() == 0 and (grad[target] > 0).all()


@pytest.mark.parametrize("preset", ["llama-tiny", "nemotron-h-tiny"])
def test_packed_loss_equals_unpacked(chat_tokenizer, preset):
    torch.manual_seed(0)
    model = Decoder(get_preset(preset, vocab_size=chat_tokenizer.vocab_size)).eval()
    texts = [("What is pi?", " About 3.14159."), ("Name a prime.", " Seven."), ("Define a set.", " Unordered, unique.")]
    examples = [to_example(*encode_record(chat_tokenizer, {"prompt": p, "completion": c}, "x"), 64) for p, c in texts]
    rows = pack(examples, 64)
    assert rows == [[0, 1, 2]]
    objective = SFTObjective()
    with torch.no_grad():
        packed = collate([[examples[i] for i in rows[0]]], 0, packed=True)
        unpacked = collate([[e] for e in examples], 0, packed=False)
        lp, up = objective.loss(model, packed), objective.loss(model, unpacked)
        torch.testing.assert_close(lp, up, atol=1e-5, rtol=1e-5)
        # and each example's logits are its own, as if it ran alone (Mamba state and attention stop at boundaries)
        logits = model(packed.inputs, segments=packed.segments)
        at = 0
        for x, _ in examples:
            alone = model(torch.tensor([x]))
            torch.testing.assert_close(logits[:, at:at + len(x)], alone, atol=1e-5, rtol=1e-5)
            at += len(x)
        # without the segments the later examples do see the earlier ones
        assert not torch.allclose(model(packed.inputs)[:, len(examples[0][0]):], logits[:, len(examples[0][0]):],
                                  atol=1e-3)


def test_example_set_is_a_function_of_the_sample_index(chat_tokenizer):
    examples = [to_example(*encode_record(chat_tokenizer, {"prompt": f"{i} +", "completion": f" {i}"}, "x"), 32)
                for i in range(10)]
    data = ExampleSet(examples, 32, 0, packed=True, seed=3, vocab_size=512)
    first = data.batch(5, 3)
    again = ExampleSet(examples, 32, 0, packed=True, seed=3, vocab_size=512).batch(5, 3)
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.segments, again.segments)
    assert sum(len(r) for r in data.rows) == 10 and len(data) < 10


def _write(tmp_path, lines):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_input_names_the_line(tmp_path, chat_tokenizer):
    good = json.dumps(CONVERSATION)
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        load_sft(_write(tmp_path, [good, "{oops"]), chat_tokenizer, 64)
    no_answer = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(DataError, match=r"d.jsonl:3: the conversation has no assistant turn"):
        load_sft(_write(tmp_path, [good, "", no_answer]), chat_tokenizer, 64)
    with pytest.raises(DataError, match=r"d.jsonl:1: expected 'messages'"):
        load_sft(_write(tmp_path, [json.dumps({"text": "x"})]), chat_tokenizer, 64)
    with pytest.raises(DataError, match=r"d.jsonl:1: each message needs a role"):
        load_sft(_write(tmp_path, [json.dumps({"messages": [{"role": "bot", "content": "x"}]})]), chat_tokenizer, 64)
