import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from hybridlm.config import ModelConfig
from hybridlm.train import checkpoint as ckpt
from hybridlm.train import read_log, train

# Trains with a checkpoint every 2 steps and SIGKILLs itself on the second save, after the files are
# in the temporary directory and before the rename: the worst moment for a crash.
_KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {conftest_dir!r})
from conftest import _small_config
from hybridlm.train import checkpoint, train

calls = 0
write = checkpoint._write_checkpoint_files

def write_then_die(*args, **kwargs):
    global calls
    write(*args, **kwargs)
    calls += 1
    if calls == 2:
        os.kill(os.getpid(), signal.SIGKILL)

checkpoint._write_checkpoint_files = write_then_die
train(_small_config({data!r}, {out!r}, **{kw!r}))
"""


def test_sigkill_mid_save_leaves_the_last_checkpoint_usable(tiny_data, tmp_path, small_config, train_losses):
    kw = dict(max_steps=6, save_every=2, eval_every=0, export_hf=False, threads=1)
    train(small_config(tiny_data, tmp_path / "straight", **kw))
    out = tmp_path / "killed"
    script = _KILLED_RUN.format(conftest_dir=str(__import__("pathlib").Path(__file__).parent), data=str(tiny_data),
                                out=str(out), kw=kw)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_00000002"]
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".step_00000004")]
    assert leftovers, "the killed save should have left its temporary directory"
    assert max(e["step"] for e in read_log(out)) == 4  # steps 3-4 ran but their checkpoint never landed

    result = train(small_config(tiny_data, out, resume=True, **kw))
    assert result.step == 6
    assert not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir())
    assert train_losses(out) == train_losses(tmp_path / "straight")


def test_round_trip_keeps_tied_weights_and_optimizer_state(tmp_path):
    weight = torch.randn(8, 4)
    model_sd = {"embed.weight": weight, "lm_head.weight": weight, "blocks.0.norm.weight": torch.ones(4)}
    optim_sd = {"state": {"embed.weight": {"step": torch.tensor(3.0), "exp_avg": torch.randn(8, 4),
                                           "exp_avg_sq": torch.rand(8, 4)}},
                "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "weight_decay": 0.0, "params": ["embed.weight"]}]}
    cfg = ModelConfig(vocab_size=8, d_model=4, n_layers=1, n_heads=1, d_ff=8)
    path = ckpt.save_checkpoint(tmp_path, 7, model_sd, optim_sd, cfg, {"lr": 1e-3}, {"step": 7, "samples_seen": 28})
    sd, osd, cfg2, state = ckpt.load_checkpoint(path)
    assert cfg2 == cfg and state["step"] == 7 and state["samples_seen"] == 28
    torch.testing.assert_close(sd["lm_head.weight"], weight)
    assert sd["lm_head.weight"].data_ptr() == sd["embed.weight"].data_ptr()  # stored once, aliased back
    for k, v in optim_sd["state"]["embed.weight"].items():
        torch.testing.assert_close(osd["state"]["embed.weight"][k], v)
    assert osd["param_groups"] == optim_sd["param_groups"]


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    cfg = ModelConfig(vocab_size=8, d_model=4, n_layers=1, n_heads=1, d_ff=8)
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, {"w": torch.ones(1)}, {}, cfg, {}, {"step": step}, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path):
    from hybridlm.checkpoints.errors import CheckpointError

    cfg = ModelConfig(vocab_size=8, d_model=4, n_layers=1, n_heads=1, d_ff=8)
    path = ckpt.save_checkpoint(tmp_path, 1, {"w": torch.ones(1)}, {}, cfg, {}, {"step": 1})
    (path / "model.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="unreadable"):
        ckpt.load_checkpoint(path)
