"""Tokenizer: the SmolLM2 GGUF tokenizer against transformers', chat templates, streaming, HF files."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers

from hybridlm.tokenizer import Tokenizer, TokenizerError, byte_alphabet

TEXTS = [
    "Hello, world! How are you today?",
    "def add(a, b):\n    \"\"\"Sum.\"\"\"\n    return a + b\n\nprint(add(1, 2))\n",
    "for (int i = 0; i < n; ++i) { total += x[i] * 3.14159; }",
    "Prices: $1,234.56 or €99 - 2024-05-17T13:45:00Z, 0xDEADBEEF, 1e-5",
    "Unicode: naïve café, Ελληνικά, Русский текст, 日本語のテキスト, 中文字符, 한국어",
    "Emoji: 🤗🚀 👩‍💻 and flags 🇫🇷",
    "tabs\tand\nnewlines\r\n   many   spaces    here   \n\n\n  trailing  ",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nIt is 4.<|im_end|>",
    "contractions: I'm, you're, they've, he'll, it's, we'd, DON'T",
    "<|endoftext|><file_sep>  <reponame>x",
]
# Where a run of blanks precedes a digit. SmolLM2's own tokenizer.json and llama.cpp ("smollm")
# split every digit off first, so "    12" is [ĠĠĠĠ, 1, 2]; transformers' GGUF converter (5.x) has
# no "smollm" entry and uses GPT-2's split alone, giving [ĠĠĠ, Ġ, 1, 2].
DIGIT_AFTER_BLANKS = ["x  1", "    12", "a\n\n\n 7", "total =  42\n        return 3"]


@pytest.fixture(scope="module")
def ours(smollm2_gguf) -> Tokenizer:
    from hybridlm.checkpoints.gguf import read_gguf_tokenizer

    return read_gguf_tokenizer(smollm2_gguf)


@pytest.fixture(scope="module")
def theirs(smollm2_gguf):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


def digit_split_reference(hf, text: str) -> list[int]:
    """llama.cpp's "smollm" rule built from transformers' GPT-2 split: cut out each \\p{N} first."""
    import regex  # transformers' own dependency
    pieces = [p for p in regex.split(r"(\p{N})", text) if p]
    return [i for p in pieces for i in hf.encode(p, add_special_tokens=False)]




def test_ids_match_transformers(ours, theirs):
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
    assert ours.encode(TEXTS[0]) == theirs.encode(TEXTS[0])  # neither adds BOS for SmolLM2


def test_digits_split_first_like_smollm2(ours, theirs):
    for text in DIGIT_AFTER_BLANKS:
        assert ours.encode(text) == digit_split_reference(theirs, text), text
    assert [ours.id_to_token(i) for i in ours.encode("    12")] == ["ĠĠĠĠ", "1", "2"]


def test_pydoc_corpus_matches_the_reference(ours, theirs, pydoc_text):
    text = pydoc_text[:200_000]
    assert ours.encode(text) == digit_split_reference(theirs, text)


def test_decode_round_trips(ours, theirs):
    for text in TEXTS + DIGIT_AFTER_BLANKS:
        ids = ours.encode(text)
        assert ours.decode(ids) == text
        assert ours.decode(ids) == theirs.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)


def test_special_ids(ours):
    assert ours.bos_token_id == 1 and ours.bos_token == "<|im_start|>"
    assert ours.eos_token_ids == (2,)  # <|im_end|> is both eos and the template's end of turn
    assert ours.pad_token_id == 2
    assert ours.vocab_size == 49152
    assert ours.add_bos is False


def test_chat_template_matches_transformers(ours, theirs):
    conversations = [
        [{"role": "user", "content": "Hi there!"}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "Write a haiku about 日本."}],
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"}],
    ]
    for messages in conversations:
        for prompt in (True, False):
            expected = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            assert ours.apply_chat_template(messages, add_generation_prompt=prompt) == expected
    rendered = ours.apply_chat_template(conversations[0])
    assert rendered.endswith("<|im_start|>assistant\n") and "You are a helpful AI assistant" in rendered


def test_stream_decoder_concatenates_to_full_decode(ours):
    for text in ["Emoji 🤗🚀👩‍💻 mixed with 中文字符 and 日本語, done.", TEXTS[4], TEXTS[7], "🇫🇷🇩🇪" * 3]:
        for skip in (False, True):
            ids = ours.encode(text)
            stream = ours.stream_decoder(skip_special_tokens=skip)
            pieces = [stream.step(i) for i in ids]
            pieces.append(stream.flush())
            assert "".join(pieces) == ours.decode(ids, skip_special_tokens=skip)
            assert not any("\ufffd" in p for p in pieces)
    # a 4-byte emoji is split over several byte tokens: the first ones emit nothing
    ids = ours.encode("🤗")
    stream = ours.stream_decoder()
    assert len(ids) > 1 and [stream.step(i) for i in ids] == [""] * (len(ids) - 1) + ["🤗"]


def test_hf_files_round_trip(ours, tmp_path):
    import transformers
    ours.to_hf_files(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["chat_template"] == ours.chat_template and config["eos_token"] == "<|im_end|>"
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    again = Tokenizer.from_file(tmp_path)
    for text in TEXTS + DIGIT_AFTER_BLANKS:
        assert hf.encode(text, add_special_tokens=True) == ours.encode(text), text
        assert again.encode(text) == ours.encode(text)
    messages = [{"role": "user", "content": "Hi"}]
    assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        ours.apply_chat_template(messages)
    assert (hf.bos_token, hf.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert (again.bos_token_id, again.eos_token_ids, again.add_bos) == (1, (2,), False)


# -- synthetic tokenizers: no real file needed ----------------------------------------------------------
def tiny_fields(**extra) -> dict:
    tokens = ["<s>", "</s>", "<|eot_id|>", *byte_alphabet().values(), "ab"]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3, 3, 3] + [1] * 257, "tokenizer.ggml.merges": ["a b"],
            "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1, **extra}


def test_gguf_add_bos_and_llama3_digits():
    tok = Tokenizer.from_gguf_fields(tiny_fields(**{"tokenizer.ggml.add_bos_token": True}))
    ids = tok.encode("ab 12345")
    assert ids[0] == 0 and tok.decode(ids, skip_special_tokens=True) == "ab 12345"
    assert tok.encode("ab", add_bos=False) == [len(tok.backend.get_vocab()) - 1]
    # Llama 3 splits numbers into groups of at most three digits before BPE
    pieces = tok.backend.pre_tokenizer.pre_tokenize_str("12345")
    assert [p for p, _ in pieces] == ["123", "45"]


def test_eos_ids_include_template_end_of_turn():
    template = "{% for m in messages %}{{ m['content'] }}<|eot_id|>{% endfor %}"
    tok = Tokenizer.from_gguf_fields(tiny_fields(**{"tokenizer.chat_template": template}))
    assert tok.eos_token_ids == (1, 2)
    assert Tokenizer.from_gguf_fields(tiny_fields()).eos_token_ids == (1,)


def test_from_file_detects_bos_from_post_processor(tmp_path):
    tok = Tokenizer.from_gguf_fields(tiny_fields(**{"tokenizer.ggml.add_bos_token": True}))
    tok.to_hf_files(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["add_bos_token"]  # not stated: the TemplateProcessing in tokenizer.json decides
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    again = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert again.add_bos and again.encode("ab")[0] == 0


def test_template_errors_and_missing_template():
    template = "{{ raise_exception('no system role') }}"
    tok = Tokenizer.from_gguf_fields(tiny_fields(**{"tokenizer.chat_template": template}))
    with pytest.raises(TokenizerError, match="no system role"):
        tok.apply_chat_template([{"role": "system", "content": "x"}])
    with pytest.raises(TokenizerError, match="no chat template"):
        Tokenizer.from_gguf_fields(tiny_fields()).apply_chat_template([])


def test_template_is_sandboxed():
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    tok = Tokenizer.from_gguf_fields(tiny_fields(**{"tokenizer.chat_template": evil}))
    with pytest.raises(Exception, match="unsafe|not safely|access"):
        tok.apply_chat_template([])


def test_unsupported_gguf_tokenizers():
    with pytest.raises(TokenizerError, match="'llama'"):
        Tokenizer.from_gguf_fields(tiny_fields(**{"tokenizer.ggml.model": "llama"}))
    with pytest.raises(TokenizerError, match="pre-tokenizer 'mystery'"):
        Tokenizer.from_gguf_fields(tiny_fields(**{"tokenizer.ggml.pre": "mystery"}))


def test_from_file_missing(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        Tokenizer.from_file(tmp_path)


def test_from_file_plain_hf_tokenizer(tmp_path):
    """A tokenizer.json with no config beside it: no BOS, no template, ids straight from the backend."""
    backend = Backend(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_file(tmp_path)
    assert tok.encode("ab a") == [2, 0] and tok.bos_token_id is None and tok.eos_token_ids == ()
