"""Synthetic sequence-to-sequence tasks generated on the fly, for training an encoder-decoder from
nothing but a name: `hybridlm train --preset t5-tiny --data task:reverse`.

    task:reverse[:MIN-MAX]   a digit string -> the same digits reversed
    task:sort[:MIN-MAX]      a digit string -> its digits in ascending order

Strings have MIN..MAX digits (default 4-12). Vocabulary: 0 <pad> (also the decoder's start
token), 1 </s>, 2..11 the digits 0-9. The source is digits + </s>; the target is the answer + </s>.

Example i of the training split is a pure function of (seed, i), so batches, like the token
shards', are reproducible after a resume. The held-out split never overlaps it: a digit string
belongs to the held-out split exactly when crc32 of it is divisible by 10.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

PAD, EOS, FIRST_DIGIT = 0, 1, 2
VOCAB_SIZE = 12
TASKS = {"reverse": lambda digits: digits[::-1], "sort": sorted}


class TaskError(ValueError):
    """A `task:` data spec that names no known task."""


def is_task(spec: str) -> bool:
    return str(spec).startswith("task:")


def held_out(digits: list[int]) -> bool:
    return zlib.crc32(bytes(digits)) % 10 == 0


@dataclass
class Seq2SeqBatch:
    """Right-padded source and decoder tensors of one batch."""

    source: torch.Tensor  # (B, S) int64, padded with PAD
    source_mask: torch.Tensor  # (B, S) 1 = real token
    decoder_input: torch.Tensor  # (B, T) [start] + target[:-1]
    labels: torch.Tensor  # (B, T) target, -100 on padding (no loss)

    def to(self, device, non_blocking: bool = False) -> "Seq2SeqBatch":
        return Seq2SeqBatch(*(t.to(device, non_blocking=non_blocking) for t in
                              (self.source, self.source_mask, self.decoder_input, self.labels)))

    @property
    def n_target_tokens(self) -> int:
        return int((self.labels != -100).sum())


class SyntheticTask:
    """One split of a task: `example(i)` and batches of examples, as `TrainBatches` serves shards."""

    def __init__(self, spec: str, split: str, seed: int = 0):
        parts = spec.split(":")
        if len(parts) not in (2, 3) or parts[1] not in TASKS:
            raise TaskError(f"unknown task {spec!r}; known: {', '.join('task:' + t for t in TASKS)} "
                            "(optionally :MIN-MAX digits, e.g. task:reverse:4-12)")
        self.name, self.fn, self.split, self.seed = parts[1], TASKS[parts[1]], split, seed
        self.min_len, self.max_len = 4, 12
        if len(parts) == 3:
            try:
                self.min_len, self.max_len = (int(x) for x in parts[2].split("-"))
            except ValueError:
                raise TaskError(f"{spec!r}: lengths must be MIN-MAX, e.g. 4-12") from None
        if not 3 <= self.min_len <= self.max_len:
            raise TaskError(f"{spec!r}: need 3 <= MIN <= MAX digits (shorter strings are too few to hold out)")
        self.vocab_size, self.manifest = VOCAB_SIZE, {"task": spec}

    @property
    def seq_len(self) -> int:
        """The longest source or target, </s> included."""
        return self.max_len + 1

    def example(self, i: int) -> tuple[list[int], list[int]]:
        """(source ids, target ids) of example i: a pure function of (seed, split, i)."""
        rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1, i])
        while True:
            digits = rng.integers(0, 10, rng.integers(self.min_len, self.max_len + 1)).tolist()
            if held_out(digits) == (self.split != "train"):
                ids = [FIRST_DIGIT + d for d in digits]
                return ids + [EOS], [FIRST_DIGIT + d for d in self.fn(digits)] + [EOS]

    def batch(self, first: int, count: int) -> Seq2SeqBatch:
        return collate([self.example(i) for i in range(first, first + count)])

    def micro_batch(self, seen: int, global_batch: int, rank: int, world: int, micro: int, size: int) -> Seq2SeqBatch:
        """The same slicing of the global batch as train/data.TrainBatches."""
        return self.batch(seen + rank * (global_batch // world) + micro * size, size)

    def validation_batches(self, n: int, rank: int, world: int, size: int) -> list[Seq2SeqBatch]:
        per_rank = n // world
        mine = [self.example(rank + j * world) for j in range(per_rank)]
        return [collate(mine[i:i + size]) for i in range(0, len(mine), size)]

    def tokenizer(self):
        """A word-level tokenizer over the task's vocabulary (digits are single tokens)."""
        from tokenizers import Tokenizer as Backend
        from tokenizers import decoders, models, pre_tokenizers

        from ..tokenizer import Tokenizer

        vocab = {"<pad>": PAD, "</s>": EOS, **{str(d): FIRST_DIGIT + d for d in range(10)}}
        backend = Backend(models.WordLevel(vocab, unk_token="<pad>"))
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                         pre_tokenizers.Digits(individual_digits=True)])
        backend.decoder = decoders.Fuse()
        backend.add_special_tokens(["<pad>", "</s>"])
        return Tokenizer(backend, eos_token="</s>", pad_token="<pad>")


def collate(examples: list[tuple[list[int], list[int]]]) -> Seq2SeqBatch:
    s, t = max(len(src) for src, _ in examples), max(len(tgt) for _, tgt in examples)
    source = torch.full((len(examples), s), PAD, dtype=torch.long)
    mask = torch.zeros((len(examples), s), dtype=torch.long)
    decoder_input = torch.full((len(examples), t), PAD, dtype=torch.long)
    labels = torch.full((len(examples), t), -100, dtype=torch.long)
    for row, (src, tgt) in enumerate(examples):
        source[row, :len(src)] = torch.tensor(src)
        mask[row, :len(src)] = 1
        decoder_input[row, :len(tgt)] = torch.tensor([PAD] + tgt[:-1])  # PAD is the start token
        labels[row, :len(tgt)] = torch.tensor(tgt)
    return Seq2SeqBatch(source, mask, decoder_input, labels)


def exact_match(model, task: SyntheticTask, n: int, batch_size: int = 64) -> float:
    """Share of the first n examples of `task` (a held-out split) whose greedy output equals the
    target exactly. model: a Seq2Seq; decoding through generation/ with the source encoded once."""
    from ..generation.generate import generate
    from ..generation.sampling import SamplingConfig

    model.eval()
    sampling = SamplingConfig(max_new_tokens=task.max_len + 1, temperature=0.0, eos_token_ids=(EOS,))
    right = 0
    for first in range(0, n, batch_size):
        examples = [task.example(i) for i in range(first, min(first + batch_size, n))]
        batch = collate(examples).to(model.device)
        bound = model.bind(batch.source, batch.source_mask)
        outputs = generate(bound, bound.start_ids, sampling).tokens
        right += sum(out == tgt[:-1] for out, (_, tgt) in zip(outputs, examples))
    return right / n
