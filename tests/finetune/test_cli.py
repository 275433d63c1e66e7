"""`hybridlm finetune ...` end to end on tiny models: outputs, exact resume, bad input."""

import json

import torch

QUICK = ("--seq-len", "64", "--micro-batch-size", "4", "--warmup-steps", "1", "--eval-every", "0",
         "--save-every", "2", "--no-progress", "--no-plot", "--peak-flops", "1e11", "--seed", "1")


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_lora_trains_writes_a_peft_adapter_and_resumes_exactly(run_cli, tiny_chat_model, sft_jsonl, tmp_path):
    args = ("finetune", "lora", tiny_chat_model, "--data", sft_jsonl, "--max-steps", "4", "--lr", "1e-2", *QUICK)
    code, out, err = run_cli(*args, "--out", tmp_path / "a", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["exported"] == "PEFT adapter" and (tmp_path / "a" / "adapter" / "adapter_model.safetensors").is_file()
    mem = summary["memory"]
    assert 0 < mem["trainable_params"] < mem["base_params"] / 10 and mem["total_bytes"] < mem["full_finetune_bytes"]
    straight = [e["loss"] for e in _log(tmp_path / "a") if e["type"] == "train"]
    assert len(straight) == 4
    # adapters only in the checkpoints
    from safetensors.torch import load_file

    ckpt = load_file(tmp_path / "a" / "checkpoints" / "step_00000004" / "model.safetensors")
    assert ckpt and all(".lora_" in k for k in ckpt)
    assert run_cli(*args, "--out", tmp_path / "b", "--stop-at-step", "2")[0] == 0
    assert run_cli(*args, "--out", tmp_path / "b", "--resume")[0] == 0
    resumed = [e["loss"] for e in _log(tmp_path / "b") if e["type"] == "train"]
    assert resumed == straight
    code, out, err = run_cli(*args, "--out", tmp_path / "b", "--resume", "--max-steps", "6", "--target", "q")
    assert code == 1 and "trainable tensors differ" in err


def test_generate_with_adapter_matches_the_library(run_cli, tiny_chat_model, sft_jsonl, tmp_path):
    from hybridlm.checkpoints.registry import load_model
    from hybridlm.finetune.peft_format import load_adapter
    from hybridlm.generation import SamplingConfig, generate

    run = tmp_path / "run"
    assert run_cli("finetune", "lora", tiny_chat_model, "--data", sft_jsonl, "--out", run, "--max-steps", "3",
                   "--lr", "3e-2", *QUICK)[0] == 0
    code, out, err = run_cli("generate", tiny_chat_model, "What does str.upper do?", "--chat", "--adapter",
                             run / "adapter", "--temperature", "0", "--max-new-tokens", "8", "--json")
    assert code == 0, err
    lm = load_model(tiny_chat_model)
    load_adapter(lm.model, run / "adapter")
    ids = lm.tokenizer.encode(lm.tokenizer.apply_chat_template([{"role": "user", "content": "What does str.upper do?"}]))
    with torch.no_grad():
        expected = generate(lm.model.eval(), [ids], SamplingConfig(max_new_tokens=8, temperature=0)).tokens[0]
    assert json.loads(out)["token_ids"] == expected
    code, out, err = run_cli("generate", tiny_chat_model, "hi", "--adapter", tmp_path, "--max-new-tokens", "2")
    assert code == 1 and "not a PEFT adapter" in err and len(err.strip().splitlines()) == 1


def test_dpo_raises_the_held_out_margin(run_cli, tiny_chat_model, tmp_path):
    # one preference over varied prompts: held-out prompts are new, the preferred style is not
    pairs = [{"prompt": f"Please explain item {i} of the list.", "chosen": " Sure: it is explained in the docs.",
              "rejected": " No."} for i in range(40)]
    data = tmp_path / "prefs.jsonl"
    data.write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    code, out, err = run_cli("finetune", "dpo", tiny_chat_model, "--data", data, "--out", tmp_path / "run",
                             "--max-steps", "6", "--lr", "1e-2", "--val-fraction", "0.2", "--beta", "0.5", *QUICK)
    assert code == 0, err
    log = _log(tmp_path / "run")
    val = [e for e in log if e["type"] == "val"][-1]
    assert val["val_reward_margin"] > 0 and val["val_reward_accuracy"] > 0.5
    assert all("reward_margin" in e for e in log if e["type"] == "train")


def test_qlora_trains_over_a_4bit_base(run_cli, tiny_chat_model, sft_jsonl, tmp_path):
    code, out, err = run_cli("finetune", "qlora", tiny_chat_model, "--data", sft_jsonl, "--out", tmp_path / "q",
                             "--max-steps", "2", "--target", "q", "--target", "down", *QUICK, "--json")
    assert code == 0, err
    mem = json.loads(out)["memory"]
    assert mem["frozen_weight_bytes"] < mem["base_params"] * 4 * 0.6  # 4-bit linears beside float embeddings


def test_bad_input_is_one_line_and_writes_nothing(run_cli, tiny_chat_model, sft_jsonl, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(sft_jsonl.read_text().splitlines()[0] + "\n{not json\n")
    for argv, needle in [(("--data", bad), "bad.jsonl:2: not valid JSON"),
                         (("--data", sft_jsonl, "--target", "in_proj"), "name no layer")]:
        out_dir = tmp_path / "never"
        code, out, err = run_cli("finetune", "lora", tiny_chat_model, "--out", out_dir, *argv, *QUICK)
        assert code == 1 and needle in err and len(err.strip().splitlines()) == 1, err
        assert not out_dir.exists()


def test_distill_refuses_another_tokenizer_and_trains_a_hybrid_student(run_cli, tiny_chat_model, tmp_path):
    from tests.train.conftest import build_dataset

    from hybridlm.checkpoints.hf import save_hf_checkpoint
    from hybridlm.models.decoder import Decoder
    from hybridlm.presets import get_preset
    from hybridlm.tokenizer import Tokenizer

    data = build_dataset(tmp_path / "data")
    code, out, err = run_cli("finetune", "distill", "nemotron-h-tiny", "--teacher", tiny_chat_model, "--data", data,
                             "--out", tmp_path / "x", *QUICK)
    assert code == 1 and "different tokenizer" in err
    teacher = tmp_path / "teacher"
    tok = Tokenizer.from_file(data)
    torch.manual_seed(0)
    save_hf_checkpoint(Decoder(get_preset("llama-tiny", vocab_size=tok.vocab_size, d_model=64, n_heads=4,
                                          n_kv_heads=2, d_ff=128)), teacher, "llama", overwrite=True)
    tok.to_hf_files(teacher)
    code, out, err = run_cli("finetune", "distill", "nemotron-h-tiny", "--teacher", teacher, "--data", data,
                             "--out", tmp_path / "s", "--max-steps", "2", "--hidden-weight", "0.5",
                             "--set", "d_model=64", *QUICK, "--json")
    assert code == 0, err
    log = _log(tmp_path / "s")
    assert {"ce", "kl", "hidden_mse"} <= set(log[0]) and json.loads(out)["exported"] == "nemotron_h"


def test_sft_with_packing_exports_a_loadable_model(run_cli, tiny_chat_model, sft_jsonl, tmp_path):
    from hybridlm.checkpoints.registry import load_model

    code, out, err = run_cli("finetune", "sft", tiny_chat_model, "--data", sft_jsonl, "--out", tmp_path / "s",
                             "--packing", "--max-steps", "3", "--lr", "1e-3", *QUICK, "--seq-len", "256", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["exported"] == "llama" and summary["rows"] < summary["train_examples"]  # packed
    assert summary["val_loss"] is not None
    tuned, base = load_model(tmp_path / "s" / "model"), load_model(tiny_chat_model)
    assert tuned.tokenizer.chat_template == base.tokenizer.chat_template
    changed = [k for k, v in tuned.model.state_dict().items() if not torch.equal(v, base.model.state_dict()[k])]
    assert changed  # every weight trains in sft
