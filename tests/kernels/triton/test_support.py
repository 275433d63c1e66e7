"""Where the Triton kernels run (kernels/triton_support.py): the models' switch is CUDA-only, the
kernels' own check accepts the interpreter, and both say why not."""

import torch

from hybridlm.kernels import triton_support


def test_interpreter_runs_cpu_tensors_but_models_stay_on_pytorch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cpu = torch.zeros(1)
    assert triton_support.runs_on(cpu)
    assert not triton_support.use_triton(cpu)  # CPU forwards never change
    assert "interpreter" in triton_support.describe()


def test_without_interpreter_cpu_tensors_are_refused_with_the_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_support.runs_on(torch.zeros(1))
    try:
        triton_support.require(torch.zeros(1), "flash attention")
    except ValueError as err:
        assert "CUDA tensors" in str(err) and "cpu" in str(err)
    else:
        raise AssertionError("require accepted a CPU tensor without the interpreter")


def test_switch_off_is_honoured(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # as if on a GPU
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    t = torch.zeros(1)
    assert triton_support.use_triton(t)
    triton_support.set_enabled(False)
    try:
        assert not triton_support.use_triton(t)
    finally:
        triton_support.set_enabled(True)


def test_info_reports_the_gpu_kernels(capsys):
    from hybridlm.cli import main

    assert main(["info", "llama-tiny"]) == 0
    assert "gpu kernels     triton" in capsys.readouterr().out
