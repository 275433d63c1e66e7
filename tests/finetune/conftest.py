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
