import numpy as np

from hybridlm.data.tokenization import encode_documents, resolve_tokenizer, separator_id


def test_a_bare_tokenizer_json_ends_documents_with_endoftext(tiny_tokenizer):
    tok, info = resolve_tokenizer(tiny_tokenizer)
    assert tok.eos_token is None  # a bare tokenizer.json names no eos...
    assert separator_id(tok) == tok.token_to_id("<|endoftext|>")  # ...so the fallback separator is used
    assert info["kind"] == "tokenizer.json" and info["vocab_size"] == 500 and info["separator"] == "<|endoftext|>"
    assert len(info["sha256"]) == 64


def test_special_token_text_inside_a_document_stays_text(tiny_tokenizer):
    tok, _ = resolve_tokenizer(tiny_tokenizer)
    texts = ["a file that mentions <|endoftext|> in a string", "plain"]
    arrays = encode_documents(texts, tok)
    assert all(a.dtype == np.uint32 for a in arrays)
    assert separator_id(tok) not in arrays[0].tolist()
    assert [tok.decode(a.tolist()) for a in arrays] == texts
    assert tok.backend.encode_special_tokens is False  # the setting is restored
