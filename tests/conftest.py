"""Fixtures shared across the test tree."""

import os
from pathlib import Path

import pytest
import torch

# Triton reads TRITON_INTERPRET when it is first imported (its own library functions are decorated
# then), and torch.compile imports it, so a CPU machine sets it here, before any test runs: the
# kernels of tests/kernels/triton then run in Triton's CPU interpreter. CPU models never use Triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF. The setup script installs it, so its absence is an
    error with the install command in it, never a skip."""
    from hybridlm.checkpoints.registry import resolve_gguf

    return resolve_gguf("smollm2-135m")


@pytest.fixture(scope="session")
def pydoc_text() -> str:
    """Real prose every Python installation has: the bundled documentation topics."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, pydoc_text) -> Path:
    """A tiny Llama (random weights, seed 0) with a real BPE tokenizer, saved as an HF directory:
    what commands that load a model by path need, in milliseconds."""
    import torch

    from hybridlm.checkpoints.hf import hf_arch_for, save_hf_checkpoint
    from hybridlm.models.decoder import Decoder
    from hybridlm.presets import get_preset
    from hybridlm.tokenizer import Tokenizer

    torch.manual_seed(0)
    model = Decoder(get_preset("llama-tiny")).eval()
    path = tmp_path_factory.mktemp("tiny-llama")
    save_hf_checkpoint(model, path, hf_arch_for(model.config), overwrite=True)
    Tokenizer.train_bpe([pydoc_text[:200_000]], vocab_size=1024).to_hf_files(path)
    return path


@pytest.fixture
def one_thread():
    """Tiny matmuls: a second thread costs more than it gives, and far more on a loaded machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
