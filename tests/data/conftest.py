"""Made-up documents with known properties for the curation stage tests."""

import numpy as np
import pytest

_LETTERS = list("abcdefghijklmnopqrstuvwxyz")


def _vocabulary(rng: np.random.Generator, size: int = 400) -> list[str]:
    return ["".join(rng.choice(_LETTERS, size=rng.integers(3, 9))) for _ in range(size)]


@pytest.fixture
def make_prose():
    """make_prose(seed, words=150) -> random sentences over a 400-word vocabulary: passes every
    quality filter, and two seeds share almost no 5-word shingle."""
    return prose_maker()


def prose_maker():
    """The `make_prose` function, for module-scoped fixtures."""
    vocab = _vocabulary(np.random.default_rng(12345))

    def make(seed: int, words: int = 150) -> str:
        rng = np.random.default_rng(seed)
        picked = [vocab[i] for i in rng.integers(0, len(vocab), size=words)]
        sentences, start = [], 0
        while start < words:
            length = int(rng.integers(6, 14))
            chunk = picked[start:start + length]
            sentences.append(chunk[0].capitalize() + (" " + " ".join(chunk[1:]) if chunk[1:] else "") + ".")
            start += length
        return " ".join(sentences)

    return make


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> str:
    """A byte-level BPE of 500 tokens trained on the pydoc topics, as a bare tokenizer.json."""
    from pydoc_data.topics import topics

    from hybridlm.tokenizer import Tokenizer

    path = tmp_path_factory.mktemp("tokenizer") / "tiny.json"
    Tokenizer.train_bpe(list(topics.values()), vocab_size=500).backend.save(str(path))
    return str(path)
