"""A synthetic vision-language task made on the fly: coloured shapes at positions, and questions
whose answer is only in the picture.

A scene holds 1-3 shapes (distinct kinds: square, circle, triangle; distinct colours: red, green,
blue, yellow), each in its own cell of a 2 x 2 grid (with a few pixels of jitter) on black. One
question per example, all six words long, answered by one word:

    how many shapes are there ?      one | two | three         (chance 1/3)
    what color is the <shape> ?      red | green | blue | yellow (chance 1/4)
    what shape is colored <color> ?  square | circle | triangle (chance 1/3)
    which side is the <shape> ?      left | right               (chance 1/2)

Every answer is uniform given the question's words, so a text-only model can do no better than
chance (`CHANCE`, the mean over the four kinds). Example i of a split is a pure function of
(seed, split, i); a scene (kinds, colours, cells and the question) belongs to the held-out split
exactly when its crc32 is divisible by 8, so held-out scenes are never trained on.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

SHAPES = ("square", "circle", "triangle")
COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (235, 220, 40)}
COUNTS = ("one", "two", "three")
SIDES = ("left", "right")
QUESTION_WORDS = "how many shapes are there ? what color is the shape colored which side and".split()
SPECIALS = ("<pad>", "</s>", "<image>")
WORDS = SPECIALS + tuple(dict.fromkeys(QUESTION_WORDS + list(SHAPES) + list(COLORS) + list(COUNTS) + list(SIDES)))
VOCAB = {w: i for i, w in enumerate(WORDS)}
PAD, EOS, IMAGE = 0, 1, 2
CHANCE = (1 / 3 + 1 / 4 + 1 / 3 + 1 / 2) / 4


@dataclass(frozen=True)
class Thing:
    shape: str
    color: str
    cell: int  # 0..3: row-major in the 2 x 2 grid; columns 0 (left) and 1 (right)


@dataclass(frozen=True)
class Example:
    things: tuple[Thing, ...]
    question: str
    answer: str
    jitter: tuple[tuple[int, int], ...]  # pixel offsets of each thing inside its cell

    def key(self) -> bytes:
        return repr((self.things, self.question)).encode()


def make_example(rng: np.random.Generator) -> Example:
    n = int(rng.integers(1, 4))
    shapes = rng.permutation(len(SHAPES))[:n]
    colors = rng.permutation(len(COLORS))[:n]
    cells = rng.permutation(4)[:n]
    names = list(COLORS)
    things = tuple(Thing(SHAPES[s], names[c], int(cell)) for s, c, cell in zip(shapes, colors, cells))
    kind = int(rng.integers(4))
    t = things[int(rng.integers(n))]
    if kind == 0:
        question, answer = "how many shapes are there ?", COUNTS[n - 1]
    elif kind == 1:
        question, answer = f"what color is the {t.shape} ?", t.color
    elif kind == 2:
        question, answer = f"what shape is colored {t.color} ?", t.shape
    else:
        question, answer = f"which side is the {t.shape} ?", SIDES[t.cell % 2]
    jitter = tuple((int(rng.integers(0, 4)), int(rng.integers(0, 4))) for _ in things)
    return Example(things, question, answer, jitter)


def draw(example: Example, size: int = 32):
    """The scene as a PIL RGB image of size x size pixels."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (0, 0, 0))
    pen = ImageDraw.Draw(image)
    cell, extent = size // 2, int(size * 0.34)  # each shape ~2/3 of its cell
    for thing, (dx, dy) in zip(example.things, example.jitter):
        x0, y0 = (thing.cell % 2) * cell + dx, (thing.cell // 2) * cell + dy
        x1, y1 = x0 + extent, y0 + extent
        fill = COLORS[thing.color]
        if thing.shape == "square":
            pen.rectangle((x0, y0, x1, y1), fill=fill)
        elif thing.shape == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            pen.polygon(((x0 + x1) / 2, y0, x1, y1, x0, y1), fill=fill)
    return image


def question_kind(question: str) -> str:
    """count, color, shape or side: what the question asks about."""
    words = question.split()
    return {"how": "count", "which": "side"}.get(words[0]) or words[1]


def held_out(example: Example) -> bool:
    return zlib.crc32(example.key()) % 8 == 0


def caption(example: Example) -> str:
    """What the picture shows, in words: "<color> <shape> <side>" per thing, left to right by cell,
    joined by "and" (the text side of CLIP-style pre-training)."""
    things = sorted(example.things, key=lambda t: (t.cell % 2, t.cell // 2))
    return " and ".join(f"{t.color} {t.shape} {SIDES[t.cell % 2]}" for t in things)


def encode_words(text: str) -> list[int]:
    return [VOCAB[w] for w in text.split()]


class ShapesTask:
    """One split ("train" or "val") of the task: examples, and batches of them as tensors."""

    def __init__(self, split: str, seed: int = 0, image_size: int = 32):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {split!r}")
        self.split, self.seed, self.image_size = split, seed, image_size
        self.vocab_size = len(WORDS)

    def example(self, i: int) -> Example:
        rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1, i])
        while True:
            ex = make_example(rng)
            if held_out(ex) == (self.split == "val"):
                return ex

    def batch(self, first: int, count: int, cfg) -> "ShapesBatch":
        """Examples first..first+count as (ids, pixels, answers); cfg: the VisionConfig (normalisation)."""
        from .image import preprocess

        examples = [self.example(i) for i in range(first, first + count)]
        prompts = [[IMAGE] + encode_words(ex.question) for ex in examples]
        answers = torch.tensor([VOCAB[ex.answer] for ex in examples])
        ids = torch.tensor([p + [VOCAB[ex.answer], EOS] for p, ex in zip(prompts, examples)])
        pixels = torch.stack([preprocess(draw(ex, self.image_size), cfg) for ex in examples])
        return ShapesBatch(ids, pixels, answers, examples)


@dataclass
class CaptionBatch:
    """Images and their captions, right-padded: what `train.objectives.ContrastiveImageText` reads."""

    pixels: torch.Tensor  # (B, C, H, W)
    ids: torch.Tensor  # (B, T) caption tokens, PAD after the caption
    mask: torch.Tensor  # (B, T) 1 = caption token

    def to(self, device, non_blocking: bool = False) -> "CaptionBatch":
        return CaptionBatch(*(t.to(device, non_blocking=non_blocking) for t in (self.pixels, self.ids, self.mask)))


class ShapesCaptions:
    """`task:shapes-captions`: (image, caption) pairs of the shapes task, served as the trainer
    serves token shards (micro_batch, validation_batches), with the contrastive objective."""

    MAX_WORDS = 11  # three things of three words and two "and"s

    def __init__(self, split: str, seed: int = 0, vision=None):
        from .config import VisionConfig

        self.task = ShapesTask(split, seed)
        self.vision = vision or VisionConfig(mean=(0.5,) * 3, std=(0.5,) * 3)
        self.vocab_size, self.manifest, self.seq_len = len(WORDS), {"task": "task:shapes-captions"}, self.MAX_WORDS

    @property
    def objective(self):
        from ..train.objectives import ContrastiveImageText

        return ContrastiveImageText()

    def batch(self, first: int, count: int) -> CaptionBatch:
        from .image import preprocess

        examples = [self.task.example(i) for i in range(first, first + count)]
        ids = torch.full((count, self.MAX_WORDS), PAD, dtype=torch.long)
        mask = torch.zeros((count, self.MAX_WORDS), dtype=torch.long)
        for row, ex in enumerate(examples):
            words = encode_words(caption(ex))
            ids[row, :len(words)] = torch.tensor(words)
            mask[row, :len(words)] = 1
        pixels = torch.stack([preprocess(draw(ex, self.vision.image_size), self.vision) for ex in examples])
        return CaptionBatch(pixels, ids, mask)

    def micro_batch(self, seen: int, global_batch: int, rank: int, world: int, micro: int, size: int) -> CaptionBatch:
        """The same slicing of the global batch as train/data.TrainBatches."""
        return self.batch(seen + rank * (global_batch // world) + micro * size, size)

    def validation_batches(self, n: int, rank: int, world: int, size: int) -> list[CaptionBatch]:
        per_rank = n // world
        start = rank * per_rank
        return [self.batch(start + i, min(size, per_rank - i)) for i in range(0, per_rank, size)]


@dataclass
class ShapesBatch:
    ids: torch.Tensor  # (B, 9): <image>, six question words, the answer, </s>
    pixels: torch.Tensor  # (B, C, H, W) one image per row
    answers: torch.Tensor  # (B,) the answer's token id
    examples: list[Example]

    ANSWER_AT = 7  # column of the answer in ids; the logits at column 6 predict it


def tokenizer():
    """A word-level tokenizer over the task's vocabulary; "<image>" is one special token."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    from ..tokenizer import Tokenizer

    backend = Backend(models.WordLevel(dict(VOCAB), unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    backend.add_special_tokens(list(SPECIALS))
    # the task's prompts are bare questions: a user turn is its content, an assistant turn ends in </s>
    template = "{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'assistant' %} </s>{% endif %} {% endfor %}"
    return Tokenizer(backend, eos_token="</s>", pad_token="<pad>", chat_template=template)
