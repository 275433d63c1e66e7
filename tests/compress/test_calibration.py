"""Calibration data: the held-out slice never reaches calibration; user files and their errors."""

import json

import pytest
import torch

from hybridlm.compress.calibration import (Calibration, build_calibration, calibration_prose, heldout_text,
                                           read_calibration_file, sequences)
from hybridlm.compress.config import CompressError


class _Chars:
    """A tokenizer stand-in: one token per character."""

    def encode(self, text):
        return [ord(c) % 1000 for c in text]


def test_heldout_and_calibration_prose_share_no_topic():
    from pydoc_data.topics import topics

    held, calib = heldout_text(), calibration_prose()
    assert held and calib
    for text in topics.values():
        if len(text) > 200:  # long enough to be one topic only
            assert (text in held) != (text in calib)


def test_default_calibration_is_half_prose_half_code_of_the_requested_size():
    calib = build_calibration(_Chars(), n_tokens=4096, seq_len=256)
    assert calib.ids.shape == (16, 256) and calib.ids.dtype == torch.long
    assert "held out" in calib.source or "not held out" in calib.source


def test_user_text_and_jsonl_files(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("hello world " * 100)
    calib = build_calibration(_Chars(), txt, n_tokens=512, seq_len=128)
    assert calib.ids.shape == (4, 128)
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"line {i} " * 20}) for i in range(10)) + "\n")
    assert "line 3" in read_calibration_file(jl)
    short = tmp_path / "short.txt"
    short.write_text("tiny text")
    assert build_calibration(_Chars(), short, n_tokens=512, seq_len=128).ids.shape == (1, 9)


@pytest.mark.parametrize("content, message", [("", "is empty"), ("  \n\n ", "is empty"),
                                              ('{"text": "a"}\nnot json\n', "line 2 is not JSON"),
                                              ('{"body": "a"}\n', "line 1 has no string \"text\"")])
def test_bad_calibration_files(tmp_path, content, message):
    path = tmp_path / ("c.jsonl" if "{" in content or "json" in content else "c.txt")
    path.write_text(content)
    with pytest.raises(CompressError, match=message):
        read_calibration_file(path)


def test_missing_file_and_too_few_tokens(tmp_path):
    with pytest.raises(CompressError, match="not found"):
        read_calibration_file(tmp_path / "nope.txt")
    with pytest.raises(CompressError, match="fewer than 2 tokens"):
        sequences([5], 100, 10, "x")


def test_sequences_spread_over_the_text_and_batches_cover_them():
    calib = sequences(list(range(1000)), 300, 100, "x")
    assert calib.ids.shape == (3, 100)
    assert calib.ids[0, 0] == 0 and calib.ids[-1, -1] == 999  # first and last windows
    batches = Calibration(torch.zeros(10, 100, dtype=torch.long), "x").batches(300)
    assert [b.shape[0] for b in batches] == [3, 3, 3, 1]
