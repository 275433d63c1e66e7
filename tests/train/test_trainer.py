import json
import math

import pytest
import torch

from hybridlm.train import read_log, train
from hybridlm.train.config import TrainConfigError
from hybridlm.train.loss import lm_loss


def test_a_run_learns_and_logs_every_step(tiny_data, tmp_path, small_config, train_losses):
    out = tmp_path / "run"
    result = train(small_config(tiny_data, out, max_steps=12, eval_every=6, plot=True))
    log = read_log(out)
    steps = [e for e in log if e["type"] == "train"]
    vals = [e for e in log if e["type"] == "val"]
    assert [e["step"] for e in steps] == list(range(1, 13))
    for e in steps:
        assert {"step", "loss", "lr", "tokens_per_s", "grad_norm", "mfu", "tokens"} <= set(e)
        assert e["tokens_per_s"] > 0 and 0 < e["mfu"] and math.isfinite(e["loss"])
    assert steps[-1]["tokens"] == 12 * 4 * 32 == result.tokens
    assert [v["step"] for v in vals] == [6, 12]
    assert vals[-1]["val_ppl"] == pytest.approx(math.exp(vals[-1]["val_loss"]))
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5  # from ~log(320) = 5.8 it learns byte statistics fast
    assert vals[-1]["val_loss"] < vals[0]["val_loss"]
    assert result.finished and result.val_loss == vals[-1]["val_loss"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "train_config.json").read_text())["max_steps"] == 12
    assert result.exported == "gpt2" and (out / "model" / "config.json").is_file()


def test_resume_repeats_the_uninterrupted_losses_exactly(tiny_data, tmp_path, small_config, train_losses):
    # dropout and accumulation on: the RNG and the data position must both be restored
    kw = dict(dropout=0.1, max_steps=6, save_every=2, export_hf=False)
    train(small_config(tiny_data, tmp_path / "straight", **kw))
    first = train(small_config(tiny_data, tmp_path / "stopped", stop_at_step=3, **kw))
    assert first.step == 3 and not first.finished
    second = train(small_config(tiny_data, tmp_path / "stopped", resume=True, **kw))
    assert second.step == 6 and second.finished
    straight, resumed = train_losses(tmp_path / "straight"), train_losses(tmp_path / "stopped")
    assert list(resumed) == [1, 2, 3, 4, 5, 6]  # the log was continued, not duplicated
    assert resumed == straight  # bit for bit
    vals = [e["val_loss"] for e in read_log(tmp_path / "stopped") if e["type"] == "val"]
    assert vals == [e["val_loss"] for e in read_log(tmp_path / "straight") if e["type"] == "val"]


def test_an_existing_run_is_not_overwritten(tiny_data, tmp_path, small_config, train_losses):
    train(small_config(tiny_data, tmp_path / "run", max_steps=1, export_hf=False))
    with pytest.raises(FileExistsError, match="--resume"):
        train(small_config(tiny_data, tmp_path / "run", max_steps=1))


def test_accumulation_equals_one_big_batch(tiny_data, tmp_path, small_config, train_losses):
    from safetensors.torch import load_file

    kw = dict(max_steps=2, global_batch_size=8, eval_every=0, save_every=0, export_hf=False, grad_clip=0.0)
    train(small_config(tiny_data, tmp_path / "accum", micro_batch_size=2, **kw))
    train(small_config(tiny_data, tmp_path / "big", micro_batch_size=8, **kw))
    a = load_file(tmp_path / "accum/checkpoints/step_00000002/model.safetensors")
    b = load_file(tmp_path / "big/checkpoints/step_00000002/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)


def test_activation_checkpointing_changes_memory_not_numbers(tiny_data, tmp_path, small_config, train_losses):
    kw = dict(max_steps=2, eval_every=0, save_every=0, export_hf=False, dropout=0.1)
    train(small_config(tiny_data, tmp_path / "plain", **kw))
    train(small_config(tiny_data, tmp_path / "recompute", activation_checkpointing=True, **kw))
    a, b = train_losses(tmp_path / "plain"), train_losses(tmp_path / "recompute")
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-6 for k in a)


def test_moe_model_adds_the_balancing_loss_and_logs_expert_load(tiny_data, tmp_path, small_config, train_losses):
    moe = {"d_model": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64, "n_experts": 4}
    train(small_config(tiny_data, tmp_path / "moe", preset="mixtral-tiny", model_overrides=moe, max_steps=2,
                       eval_every=0, export_hf=False, activation_checkpointing=True))
    steps = [e for e in read_log(tmp_path / "moe") if e["type"] == "train"]
    for e in steps:
        # Switch's loss is 1 for a perfectly balanced router and at most E; two layers are summed
        assert 2.0 <= e["moe_aux_loss"] <= 2 * 4 and len(e["expert_load"]) == 4
        assert sum(e["expert_load"]) == pytest.approx(1.0, abs=1e-3)
        assert e["moe_max_load"] >= 1.0


def test_bf16_autocast_tracks_fp32(tiny_data, tmp_path, small_config, train_losses):
    kw = dict(max_steps=1, eval_every=0, save_every=0, export_hf=False)
    train(small_config(tiny_data, tmp_path / "fp32", precision="fp32", **kw))
    train(small_config(tiny_data, tmp_path / "bf16", precision="bf16", **kw))
    fp32, bf16 = train_losses(tmp_path / "fp32")[1], train_losses(tmp_path / "bf16")[1]
    assert fp32 != bf16 and abs(fp32 - bf16) / fp32 < 1e-2  # bf16 keeps ~3 significant digits


def test_bad_settings_say_why(tiny_data, tmp_path, small_config, train_losses):
    with pytest.raises(TrainConfigError, match="CUDA"):
        train(small_config(tiny_data, tmp_path / "a", precision="fp16"))
    with pytest.raises(TrainConfigError, match="max_seq_len"):
        train(small_config(tiny_data, tmp_path / "b", model_overrides={"max_seq_len": 16}))


def test_label_smoothing_is_the_mixture_with_uniform():
    logits = torch.randn(2, 3, 11)
    targets = torch.randint(0, 11, (2, 3))
    logp = logits.log_softmax(-1)
    nll = -logp.gather(-1, targets[..., None]).mean()
    uniform = -logp.mean()
    torch.testing.assert_close(lm_loss(logits, targets, 0.2), 0.8 * nll + 0.2 * uniform)
    torch.testing.assert_close(lm_loss(logits, targets), nll)


def test_hybrid_mamba_model_trains_and_resumes_exactly(tiny_data, tmp_path, small_config, train_losses):
    hybrid = {"d_model": 64, "layer_pattern": "M-*-", "n_heads": 2, "n_kv_heads": 1, "head_dim": 32, "d_ff": 128,
              "mamba_n_heads": 4, "mamba_head_dim": 32, "d_state": 16, "mamba_n_groups": 1, "mamba_chunk_size": 16}
    kw = dict(preset="nemotron-h-tiny", model_overrides=hybrid, max_steps=4, save_every=2, eval_every=2)
    train(small_config(tiny_data, tmp_path / "straight", **kw))
    train(small_config(tiny_data, tmp_path / "stopped", stop_at_step=2, **kw))
    train(small_config(tiny_data, tmp_path / "stopped", resume=True, **kw))
    straight = train_losses(tmp_path / "straight")
    assert straight == train_losses(tmp_path / "stopped") and straight[4] < straight[1]


def test_a_time_budget_ends_the_run_with_a_validation_and_a_checkpoint(tiny_data, tmp_path, small_config):
    from hybridlm.train.checkpoint import list_checkpoints

    result = train(small_config(tiny_data, tmp_path / "run", max_steps=1000, max_time_s=0.0, eval_every=0,
                                save_every=0, export_hf=False))
    assert result.step == 1 and not result.finished and result.val_loss is not None
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000001"]
