import json

import pytest

from hybridlm.data.documents import DataError
from hybridlm.data.tokenizer_training import train_tokenizer, training_texts
from hybridlm.tokenizer import Tokenizer, TokenizerError

SAMPLE = "def café(x):\n    return x ** 2  # naïve 日本語 <|endoftext|>"


def test_train_bpe_gives_a_byte_level_tokenizer(pydoc_text):
    tok = Tokenizer.train_bpe([pydoc_text], vocab_size=600)
    assert tok.vocab_size == 600 and tok.eos_token == "<|endoftext|>"
    assert tok.eos_token_ids == (tok.token_to_id("<|endoftext|>"),)
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE  # every byte is in the alphabet: nothing is unknown
    assert len(tok.encode("the function returns")) < len("the function returns")  # merges were learned
    with pytest.raises(TokenizerError, match="below the 256 byte tokens"):
        Tokenizer.train_bpe(["x"], vocab_size=200)


def test_saved_file_loads_in_transformers_and_back_in_hybridlm(tmp_path, pydoc_text):
    from transformers import PreTrainedTokenizerFast

    out = tmp_path / "tok.json"
    trained = train_tokenizer([pydoc_text], 700, out, show_progress=False)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(out))
    ours = Tokenizer.from_file(out)
    text = "Lists are mutable sequences; café"
    assert hf.encode(text) == ours.encode(text) == trained.encode(text)
    assert hf.decode(hf.encode(text)) == text
    with pytest.raises(FileExistsError):
        train_tokenizer([pydoc_text], 700, out, show_progress=False)
    # a directory gets tokenizer_config.json too, so eos survives the round trip
    train_tokenizer([pydoc_text], 700, tmp_path / "tok_dir", show_progress=False)
    assert Tokenizer.from_file(tmp_path / "tok_dir").eos_token == "<|endoftext|>"


def test_training_texts_from_a_prepared_dataset_take_the_train_split(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    (data / "documents.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"text": "train one", "split": "train"}, {"text": "held out", "split": "val"},
        {"text": "train two", "split": "train"}]))
    (tmp_path / "raw.txt").write_text("raw text")
    assert training_texts([str(data), str(tmp_path / "raw.txt")]) == ["train one", "train two", "raw text"]
    with pytest.raises(DataError, match="nothing to train on"):
        training_texts([])
