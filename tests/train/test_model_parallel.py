"""`hybridlm train --pp / --ep / --cp` under torchrun (gloo, 2 CPU processes) trains the model one
process trains on the same global batch: the same losses step by step and the same final weights,
through a checkpoint and resume; layouts that cannot work are refused before anything loads."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hybridlm.train import TrainConfig, read_log, train

STEPS, GLOBAL_BATCH = 4, 8
MODELS = {  # preset, overrides (kept tiny: what is tested is the bookkeeping of the split)
    "dense": ("gpt2-tiny", {"d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 128}),
    "untied": ("llama-tiny", {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 96,
                              "tie_embeddings": False}),
    "moe": ("mixtral-tiny", {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64,
                             "n_experts": 4, "moe_impl": "fast"}),
    "hybrid": ("nemotron-h-tiny", {"d_model": 64, "d_ff": 96}),  # only refused here
}
COMMON = dict(max_steps=STEPS, seq_len=32, micro_batch_size=2, global_batch_size=GLOBAL_BATCH, warmup_steps=2, lr=3e-3,
              eval_every=2, eval_sequences=8, save_every=2, progress=False, plot=False, export_hf=False,
              peak_flops=1e11)


def _flags(model: str) -> list[str]:
    preset, overrides = MODELS[model]
    out = ["--preset", preset]
    for k, v in overrides.items():
        out += ["--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}"]
    for k, v in COMMON.items():
        flag = "--" + k.replace("_", "-")
        out += ([f"--no-{flag[2:]}"] if v is False else [flag, str(v)])
    return out


def torchrun(data, out, model, *extra, nproc=2, check=True):
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "hybridlm", "train", "--data", str(data), "--out", str(out), *_flags(model), *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


_REFERENCES: dict = {}


@pytest.fixture(scope="module")
def single(tiny_data, tmp_path_factory):
    """single(model) -> the run directory of one process training it (micro-batches accumulated)."""

    def run(model):
        if model not in _REFERENCES:
            preset, overrides = MODELS[model]
            out = tmp_path_factory.mktemp(f"single-{model}") / "run"
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            train(TrainConfig(preset=preset, data_dir=str(tiny_data), out_dir=str(out), model_overrides=overrides,
                              **COMMON))
            torch.set_num_threads(threads)
            _REFERENCES[model] = out
        return _REFERENCES[model]

    yield run
    _REFERENCES.clear()


def assert_same_run(run, reference, atol=1e-5):
    final = f"checkpoints/step_{STEPS:08d}/model.safetensors"
    a, b = load_file(run / final), load_file(reference / final)
    assert a.keys() == b.keys()  # rank 0 gathered every stage's or expert's tensors
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)
    log, ref = read_log(run), read_log(reference)
    assert [(e["type"], e["step"]) for e in log] == [(e["type"], e["step"]) for e in ref]
    for e, r in zip(log, ref):
        key = "loss" if e["type"] == "train" else "val_loss"
        assert abs(e[key] - r[key]) < atol, (e, r)


def test_context_parallel_ring_equals_one_process_and_resumes(tiny_data, tmp_path, single):
    out = tmp_path / "cp"
    torchrun(tiny_data, out, "dense", "--cp", "2", "--stop-at-step", "2")  # each rank: 16 of the 32 tokens
    assert max(e["step"] for e in read_log(out)) == 2
    torchrun(tiny_data, out, "dense", "--cp", "2", "--resume")
    assert_same_run(out, single("dense"))


def test_pipeline_parallel_equals_one_process(tiny_data, tmp_path, single):
    out = tmp_path / "pp"
    torchrun(tiny_data, out, "untied", "--pp", "2")  # one block per stage, 4 micro-batches a step
    assert_same_run(out, single("untied"))


def test_expert_parallel_equals_one_process(tiny_data, tmp_path, single):
    out = tmp_path / "ep"
    torchrun(tiny_data, out, "moe", "--ep", "2")  # 2 of the 4 experts per rank, each rank its own tokens
    assert_same_run(out, single("moe"), atol=2e-5)


@pytest.mark.slow
def test_context_parallel_allgather_with_fsdp(tiny_data, tmp_path, single):
    out = tmp_path / "cp-fsdp"
    torchrun(tiny_data, out, "dense", "--cp", "2", "--cp-attention", "allgather", "--fsdp")
    assert_same_run(out, single("dense"))


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_parallel_resumes_as_ddp_and_back(tiny_data, tmp_path, single, schedule):
    out = tmp_path / "pp"
    torchrun(tiny_data, out, "untied", "--pp", "2", "--pp-schedule", schedule, "--stop-at-step", "2")
    torchrun(tiny_data, out, "untied", "--resume")  # the consolidated checkpoint: any layout resumes it
    assert_same_run(out, single("untied"))


@pytest.mark.slow
def test_expert_parallel_resumes(tiny_data, tmp_path, single):
    out = tmp_path / "ep"
    torchrun(tiny_data, out, "moe", "--ep", "2", "--stop-at-step", "2")
    torchrun(tiny_data, out, "moe", "--ep", "2", "--resume")
    assert_same_run(out, single("moe"), atol=2e-5)


@pytest.mark.slow
def test_4_ranks_dp_x_pipeline(tiny_data, tmp_path, single):
    out = tmp_path / "dp-pp"
    torchrun(tiny_data, out, "untied", "--pp", "2", nproc=4)  # 2 replicas of a 2-stage pipeline
    assert_same_run(out, single("untied"))


@pytest.mark.slow
def test_4_ranks_dp_x_context_parallel(tiny_data, tmp_path, single):
    out = tmp_path / "dp-cp"
    torchrun(tiny_data, out, "dense", "--cp", "2", nproc=4)
    assert_same_run(out, single("dense"))


@pytest.mark.slow
def test_4_ranks_tensor_x_context_parallel(tiny_data, tmp_path, single):
    out = tmp_path / "tp-cp"
    torchrun(tiny_data, out, "dense", "--tp", "2", "--cp", "2", nproc=4)
    assert_same_run(out, single("dense"))


@pytest.mark.slow
def test_8_ranks_3d_dp_x_context_x_tensor(tiny_data, tmp_path, single):
    out = tmp_path / "dp-cp-tp"
    torchrun(tiny_data, out, "dense", "--tp", "2", "--cp", "2", "--fsdp", nproc=8)  # FSDP2 over dp x cp = 4
    assert_same_run(out, single("dense"))


@pytest.mark.parametrize("model,flags,message", [
    ("hybrid", ["--cp", "2"], "Mamba"),
    ("dense", ["--ep", "2"], "MoE"),
    ("dense", ["--pp", "2"], "untied"),
    ("untied", ["--pp", "8"], "exceeds"),
    ("moe", ["--pp", "2", "--set", "tie_embeddings=false"], "load-balancing"),
    ("untied", ["--pp", "2", "--tp", "2"], "--pp combines with data parallelism only"),
    ("moe", ["--ep", "2", "--fsdp"], "--ep"),
    ("dense", ["--cp", "5"], "divide"),
])
def test_unsupported_layouts_are_refused_before_anything_loads(tmp_path, capsys, model, flags, message):
    """One process, no torchrun: the refusal comes from the config alone (the data directory does
    not even exist), as one line, with a non-zero exit, and nothing is written."""
    from hybridlm.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(out), *_flags(model), *flags]) != 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()
