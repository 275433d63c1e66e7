"""The fine-tuning proofs (bench/) run end to end on tiny models and print what the README quotes."""

import json


def test_lora_proof_prints_losses_and_answers(tiny_chat_model, tmp_path, capsys):
    from bench.lora_proof import main

    main(["--model", str(tiny_chat_model), "--steps", "2", "--train-examples", "16", "--held-out", "4",
          "--show", "1", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["held_out_loss_before"] > 0 and result["held_out_loss_after"] > 0
    assert len(result["examples"]) == 1 and "held_out_loss" in lines[0]
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


def test_distill_proof_compares_two_runs(tmp_path, capsys):
    import torch

    from bench.distill_proof import main
    from hybridlm.checkpoints.hf import save_hf_checkpoint
    from hybridlm.models.decoder import Decoder
    from hybridlm.presets import get_preset
    from tests.train.conftest import build_dataset
    from hybridlm.tokenizer import Tokenizer

    tok = Tokenizer.from_file(build_dataset(tmp_path / "tok"))  # a small BPE for a small teacher
    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    save_hf_checkpoint(Decoder(get_preset("llama-tiny", vocab_size=tok.vocab_size)), teacher, "llama", overwrite=True)
    tok.to_hf_files(teacher)
    main(["--teacher", str(teacher), "--steps", "2", "--batch", "2", "--seq-len", "32", "--max-docs", "20",
          "--out", str(tmp_path / "proof")])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["runs"]) == {"scratch", "distilled"}
    assert result["runs"]["scratch"]["tokens"] == result["runs"]["distilled"]["tokens"] == 2 * 2 * 32
