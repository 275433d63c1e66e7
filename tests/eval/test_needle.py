"""Needle probes: the prompt has the asked length, the needle sits at the asked depth, the answer is
only in the needle; a model that copies the needle's value passes every cell and one that does
not fails; the heatmap is a PNG."""

import re

import pytest
import torch

from hybridlm.eval.needle import filler_sentences, heatmap, make_probe, run_grid
from hybridlm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_hf_dir):
    return Tokenizer.from_file(tiny_hf_dir)


@pytest.fixture(scope="module")
def sentences():
    return filler_sentences(60_000)


@pytest.mark.parametrize("kind", ["single", "multikey", "variable"])
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_probe_length_depth_and_answer(tokenizer, sentences, kind, depth):
    encode = lambda t: t.split()  # noqa: E731  words as tokens: many sentences fit, so depth is fine-grained
    probe = make_probe(encode, sentences, 1500, depth, kind, seed=3)
    assert 1500 - 10 <= probe.length <= 1500  # whole sentences: a little under the budget
    hay, question = probe.prompt.rsplit("\n", 1)
    assert probe.answer not in question and hay.count(probe.answer) == 1
    first = hay.index("VAR" if kind == "variable" else "The special magic number")
    assert abs(len(hay[:first].split()) / len(hay.split()) - depth) < 0.05
    real = make_probe(lambda t: tokenizer.encode(t, add_bos=False), sentences, 600, depth, kind, seed=3)
    assert 500 <= real.length <= 600 and real.answer in real.prompt


def test_too_short_for_the_needle(tokenizer, sentences):
    with pytest.raises(ValueError, match="needs more than"):
        make_probe(lambda t: tokenizer.encode(t), sentences, 10, 0.5)
    with pytest.raises(ValueError, match="depth"):
        make_probe(lambda t: tokenizer.encode(t), sentences, 300, 1.5)


class SeenTokens:
    """The stand-in's cache: every token it was fed."""

    def __init__(self):
        self.ids: list[int] = []

    def nbytes(self) -> int:
        return 0


class Copier(torch.nn.Module):
    """A stand-in decoder that 'reads' its whole context: it spells out the value written for the
    asked key (honest) or a wrong value, one character a step, then a newline. It exercises the
    probe and grid logic, not a model's skill."""

    def __init__(self, tokenizer, honest: bool, max_seq_len: int = 2048):
        super().__init__()
        self.tok, self.honest = tokenizer, honest
        self.config = type("C", (), {"max_seq_len": max_seq_len, "vocab_size": tokenizer.vocab_size,
                                     "eos_token_id": tokenizer.eos_token_ids[0]})()
        self.device = torch.device("cpu")

    def new_cache(self, batch, **kw):
        return SeenTokens()

    def forward(self, ids, cache, attention_mask=None, last_only=False):
        cache.ids += ids[0].tolist()
        text = self.tok.decode(cache.ids)
        key = re.findall(r"for (\w+)\? The special", text)
        value = re.findall(rf"for {key[0]} is (\d{{7}})\.", text)[0] if key else None
        answer = (value if self.honest else "0000000") + "\n"
        produced = text.rsplit(" is", 1)[-1].strip(" ")  # what it already said after the question
        next_char = answer[len(produced)] if len(produced) < len(answer) else "\n"
        logits = torch.full((ids.shape[0], 1, self.config.vocab_size), -1e4)
        logits[0, 0, self.tok.encode(next_char, add_bos=False)[0]] = 0.0
        return logits


def test_grid_scores_a_copier_perfect_and_a_liar_zero(tokenizer, tmp_path):
    lengths, depths = [200, 300], [0.0, 0.5, 1.0]
    for honest, expected in ((True, 1.0), (False, 0.0)):
        model = Copier(tokenizer, honest)
        grid = run_grid(model, tokenizer, lengths, depths, "single", trials=1, max_new_tokens=10)
        assert grid.accuracy == [[expected] * 3, [expected] * 3], grid.outputs[:2]
    png = heatmap([("copier", grid), ("again", grid)], tmp_path / "needle.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="exceed the model's context"):
        run_grid(Copier(tokenizer, True, max_seq_len=256), tokenizer, [300], [0.5])
