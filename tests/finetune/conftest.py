"""A small real tokenizer with a ChatML template, shared by the fine-tuning tests."""

import pytest

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def chat_tokenizer(pydoc_text):
    """Byte-level BPE (vocab 512) trained on Python's docs, with ChatML specials and template."""
    from hybridlm.tokenizer import Tokenizer

    trained = Tokenizer.train_bpe([pydoc_text[:100_000]], vocab_size=512,
                                  special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    return Tokenizer(trained.backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML)


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory, chat_tokenizer):
    """A tiny random Llama (vocab of chat_tokenizer) saved as an HF directory with that tokenizer."""
    import torch

    from hybridlm.checkpoints.hf import save_hf_checkpoint
    from hybridlm.models.decoder import Decoder
    from hybridlm.presets import get_preset

    torch.manual_seed(0)
    model = Decoder(get_preset("llama-tiny", vocab_size=chat_tokenizer.vocab_size, d_model=64, n_heads=4,
                               n_kv_heads=2, d_ff=128, n_layers=2))
    path = tmp_path_factory.mktemp("tiny-chat")
    save_hf_checkpoint(model, path, "llama", overwrite=True)
    chat_tokenizer.to_hf_files(path)
    return path


def _instructions(n: int = 48) -> list[dict]:
    """Conversations asking what a builtin str method does, answered with its docstring's first line."""
    names = sorted(n for n in dir(str) if not n.startswith("_"))
    out = []
    for name in names[:n]:
        doc = (getattr(str, name).__doc__ or "").strip().splitlines()
        answer = next((line for line in doc if line and not line.startswith(("S.", "str."))), name)
        out.append({"messages": [{"role": "user", "content": f"What does str.{name} do?"},
                                 {"role": "assistant", "content": answer}]})
    return out


@pytest.fixture(scope="session")
def sft_jsonl(tmp_path_factory):
    import json

    path = tmp_path_factory.mktemp("sft") / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _instructions()) + "\n")
    return path


@pytest.fixture
def run_cli(capsys):
    """run_cli(*argv) -> (exit code, stdout, stderr) of `hybridlm *argv` in this process."""
    from hybridlm.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: a second thread costs more than it gives on a busy two-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
