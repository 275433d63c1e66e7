"""A finished run's RUN_DIR/model loads in `hybridlm generate` and in transformers."""

import json

import pytest
import torch

from hybridlm.train import train


@pytest.mark.parametrize("preset, arch", [("llama-tiny", "llama"), ("gpt2-tiny", "gpt2")])
def test_export_loads_in_transformers_and_generate(tiny_data, tmp_path, small_config, preset, arch, capsys):
    transformers = pytest.importorskip("transformers")
    from hybridlm.checkpoints.registry import load_model
    from hybridlm.cli import main

    out = tmp_path / "run"
    result = train(small_config(tiny_data, out, preset=preset, max_steps=2, eval_every=0))
    assert result.exported == arch
    model_dir = out / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in model_dir.iterdir()}

    ours = load_model(model_dir, dtype=torch.float32).model
    theirs = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, rtol=1e-4, atol=1e-4)
    # the trained weights, not a fresh init: the exported tensors equal the final checkpoint's
    from safetensors.torch import load_file

    final = load_file(out / "checkpoints" / "step_00000002" / "model.safetensors")
    torch.testing.assert_close(ours.state_dict()["blocks.0.mixer.wqkv.weight"], final["blocks.0.mixer.wqkv.weight"])

    capsys.readouterr()
    code = main(["generate", str(model_dir), "The", "--temperature", "0", "--max-new-tokens", "5", "--ignore-eos",
                 "--json"])
    reply = json.loads(capsys.readouterr().out)
    assert code == 0 and len(reply["token_ids"]) == 5
