"""Two CPU processes under torchrun (gloo) train the same model as one process on the same global batch."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hybridlm.train import read_log, train

STEPS, GLOBAL_BATCH = 4, 8
SMALL = ["--set", "d_model=64", "--set", "n_layers=2", "--set", "n_heads=2", "--set", "d_ff=128"]


def torchrun(data, out, *extra, nproc=2):
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "hybridlm", "train", "--preset", "gpt2-tiny", "--data", str(data), "--out", str(out), *SMALL,
            "--max-steps", str(STEPS), "--seq-len", "32", "--micro-batch-size", "2", "--global-batch-size",
            str(GLOBAL_BATCH), "--warmup-steps", "2", "--lr", "3e-3", "--eval-every", "2", "--eval-sequences", "8",
            "--save-every", "2", "--no-progress", "--no-plot", "--no-export-hf", "--peak-flops", "1e11", *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def single(tiny_data, tmp_path_factory):
    """The reference: one process, micro-batches of 2 accumulated to the global batch of 8."""
    from hybridlm.train import TrainConfig

    out = tmp_path_factory.mktemp("single") / "run"
    threads = torch.get_num_threads()  # module-scoped: the per-test one-thread fixture is not active yet
    torch.set_num_threads(1)
    train(TrainConfig(preset="gpt2-tiny", data_dir=str(tiny_data), out_dir=str(out),
                      model_overrides={"d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 128}, max_steps=STEPS,
                      seq_len=32, micro_batch_size=2, global_batch_size=GLOBAL_BATCH, warmup_steps=2, lr=3e-3,
                      eval_every=2, eval_sequences=8, save_every=2, progress=False, plot=False, export_hf=False,
                      peak_flops=1e11))
    torch.set_num_threads(threads)
    return out


def assert_same_run(run, reference):
    final = f"checkpoints/step_{STEPS:08d}/model.safetensors"
    a, b = load_file(run / final), load_file(reference / final)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)
    log, ref = read_log(run), read_log(reference)
    assert [(e["type"], e["step"]) for e in log] == [(e["type"], e["step"]) for e in ref]  # rank 0 wrote alone
    for e, r in zip(log, ref):
        key = "loss" if e["type"] == "train" else "val_loss"
        assert abs(e[key] - r[key]) < 1e-5


def test_ddp_equals_one_process(tiny_data, tmp_path, single):
    torchrun(tiny_data, tmp_path / "ddp")
    assert_same_run(tmp_path / "ddp", single)


def test_fsdp_equals_one_process_and_resumes(tiny_data, tmp_path, single):
    out = tmp_path / "fsdp"
    # with activation checkpointing inside the sharded blocks: it must not change the numbers
    torchrun(tiny_data, out, "--fsdp", "--activation-checkpointing", "--stop-at-step", "2")
    assert max(e["step"] for e in read_log(out)) == 2
    torchrun(tiny_data, out, "--fsdp", "--activation-checkpointing", "--resume")  # from the consolidated step 2
    assert_same_run(out, single)


def test_tensor_parallel_equals_one_process_and_resumes_under_ddp(tiny_data, tmp_path, single):
    out = tmp_path / "tp"
    torchrun(tiny_data, out, "--tp", "2", "--stop-at-step", "2")  # one model split over both ranks
    assert max(e["step"] for e in read_log(out)) == 2
    torchrun(tiny_data, out, "--resume")  # the consolidated checkpoint resumes as two DDP replicas
    assert_same_run(out, single)


@pytest.mark.slow
@pytest.mark.parametrize("data_parallel", ["ddp", "fsdp"])
def test_2d_data_x_tensor_parallel_equals_one_process(tiny_data, tmp_path, single, data_parallel):
    """4 ranks as 2 data-parallel replicas x 2 tensor-parallel ranks (DDP or FSDP2 over the dp dimension)."""
    out = tmp_path / data_parallel
    torchrun(tiny_data, out, "--tp", "2", *(["--fsdp"] if data_parallel == "fsdp" else []), nproc=4)
    assert_same_run(out, single)
