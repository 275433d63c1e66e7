"""Sentence embeddings: all-MiniLM-L6-v2 through our encoder matches sentence-transformers."""

import numpy as np
import pytest

from hybridlm.rag.embed import EmbedError, load_sentence_encoder


def _sentences(pydoc_text: str) -> list[str]:
    paragraphs = [p.strip() for p in pydoc_text.split("\n\n") if len(p.strip()) > 40]
    return [
        "The quick brown fox jumps over the lazy dog.",
        "A man is playing a guitar.",
        "",  # empty: [CLS] [SEP] only
        "Ünïcödé, emoji 🙂 and 中文字符 survive tokenisation.",
        "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
        "word " * 400,  # truncated at 256 tokens, as sentence-transformers does
        *paragraphs[:8],
        " ".join(paragraphs[20:30]),  # a long paragraph run, truncated too
    ]


def test_matches_sentence_transformers(minilm, pydoc_text):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = _sentences(pydoc_text)
    ours = minilm.embed(texts, batch_size=8)
    reference = sentence_transformers.SentenceTransformer(str(minilm_dir()), device="cpu")
    theirs = reference.encode(texts, batch_size=8, convert_to_numpy=True)
    assert minilm.settings.max_tokens == reference.max_seq_length == 256
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() > 0.9999, cosine
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def minilm_dir():
    from hybridlm.checkpoints.registry import resolve

    return resolve("all-minilm-l6-v2")[1]


def test_order_and_batch_size_do_not_change_vectors(minilm, pydoc_text):
    texts = [t[:200] for t in _sentences(pydoc_text)[:10]]
    one = minilm.embed(texts, batch_size=1)
    many = minilm.embed(texts, batch_size=7)
    np.testing.assert_allclose(one, many, atol=1e-5)
    reversed_ = minilm.embed(texts[::-1], batch_size=4)
    np.testing.assert_allclose(reversed_[::-1], one, atol=1e-5)


def test_similar_sentences_are_closer(minilm):
    v = minilm.embed(["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_tokenize_wraps_and_truncates(minilm):
    ids = minilm.tokenize(["hello", "word " * 1000])
    assert ids[0][0] == 101 and ids[0][-1] == 102  # [CLS] ... [SEP]
    assert len(ids[1]) == 256 and ids[1][-1] == 102


def test_decoder_models_are_refused():
    with pytest.raises(EmbedError, match="not an encoder"):
        load_sentence_encoder("smollm2-135m")
