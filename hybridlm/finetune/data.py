"""Fine-tuning data: JSONL in TRL's formats, tokenized with the loss masked to what the model should
learn, optionally packed.

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   conversation
    {"prompt": "...", "completion": "..."}                                          plain text pair
    {"prompt": [messages...], "completion": [messages...]}                          conversational pair
    {"prompt": ..., "chosen": ..., "rejected": ...}                                 preference (dpo.py)

Conversations go through the model's chat template; only assistant tokens are targets (the rest
carry IGNORE). A conversation is rendered turn by turn: the text before assistant turn i is
render(messages[:i], add_generation_prompt=True) and the turn ends where render(messages[:i + 1])
ends, so each piece is tokenized on its own and its mask is exact. A template for which those
renders are not prefixes of each other is refused. A plain pair is prompt ids + completion ids +
EOS, with loss on the completion and EOS.

An example is (inputs, targets): ids[:-1] and the masked ids[1:], at most seq_len long (longer
examples are cut at the end). A row of a batch holds one example or, packed, several back to back
with `segments` ids; the model keeps attention and Mamba state inside each (models/decoder.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..train.objectives import IGNORE


class DataError(ValueError):
    """A fine-tuning data file that cannot be used; the message names the file and line."""


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object is a DataError."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        records.append((n, obj))
    if not records:
        raise DataError(f"{path}: no examples")
    return records


def check_messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or \
                m.get("role") not in ("system", "user", "assistant"):
            raise DataError(f"{where}: each message needs a role (system, user, assistant) and a string content")
    return messages


def encode_conversation(tokenizer, messages: list[dict], where: str = "conversation") -> tuple[list[int], list[bool]]:
    """messages -> (ids, trained) where trained[i] says token i is part of an assistant turn."""
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant turn (nothing to learn)")
    render = tokenizer.apply_chat_template
    ids, trained, before = [], [], ""
    for i, m in enumerate(messages):
        try:
            end = render(messages[:i + 1], add_generation_prompt=False)
            prompt = render(messages[:i], add_generation_prompt=True) if m["role"] == "assistant" else end
        except ValueError as e:  # no template, or the template's own raise_exception
            raise DataError(f"{where}: {e}") from None
        if not (prompt.startswith(before) and end.startswith(prompt)):
            raise DataError(f"{where}: the chat template does not render turns as prefixes of each other, so "
                            "assistant tokens cannot be masked exactly")
        for text, learn in ((prompt[len(before):], False), (end[len(prompt):], True)):
            piece = tokenizer.encode(text, add_bos=False) if text else []
            ids += piece
            trained += [learn] * len(piece)
        before = end
    return ids, trained


def encode_pair(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[bool]]:
    """A plain prompt/completion: loss on the completion and the EOS that ends it."""
    p = tokenizer.encode(prompt)
    c = tokenizer.encode(completion, add_bos=False)
    eos = [tokenizer.eos_token_ids[0]] if tokenizer.eos_token_ids else []
    return p + c + eos, [False] * len(p) + [True] * (len(c) + len(eos))


def encode_record(tokenizer, record: dict, where: str) -> tuple[list[int], list[bool]]:
    """One SFT line (messages, or prompt/completion as strings or message lists) -> (ids, trained)."""
    if "messages" in record:
        return encode_conversation(tokenizer, check_messages(record["messages"], where), where)
    if "prompt" in record and "completion" in record:
        prompt, completion = record["prompt"], record["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            return encode_pair(tokenizer, prompt, completion)
        if isinstance(prompt, list) and isinstance(completion, list):
            return encode_conversation(tokenizer, check_messages(prompt + completion, where), where)
        raise DataError(f"{where}: prompt and completion must both be strings or both message lists")
    raise DataError(f"{where}: expected 'messages', or 'prompt' and 'completion' (found {sorted(record)})")


def to_example(ids: list[int], trained: list[bool], seq_len: int) -> tuple[list[int], list[int]]:
    """(inputs, targets) of at most seq_len tokens: next-token targets, IGNORE where not trained."""
    ids, trained = ids[:seq_len + 1], trained[:seq_len + 1]
    return ids[:-1], [t if learn else IGNORE for t, learn in zip(ids[1:], trained[1:])]


def pack(examples: list[tuple[list[int], list[int]]], seq_len: int) -> list[list[int]]:
    """Greedy first-fit in order: rows of example indices whose lengths sum to at most seq_len."""
    rows, room = [], []
    for i, (inputs, _) in enumerate(examples):
        n = len(inputs)
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(seq_len - n)
    return rows


@dataclass
class SFTBatch:
    inputs: torch.Tensor  # (B, T) int64, right-padded with pad_id
    targets: torch.Tensor  # (B, T) int64, IGNORE where no loss (prompts, padding)
    segments: torch.Tensor | None  # (B, T) int64 example ids within each row when packed, else None

    def to(self, device, non_blocking: bool = False) -> "SFTBatch":
        move = (lambda t: None if t is None else t.to(device, non_blocking=non_blocking))
        return SFTBatch(move(self.inputs), move(self.targets), move(self.segments))

    @property
    def n_targets(self) -> int:
        return int((self.targets != IGNORE).sum())


def collate(rows: list[list[tuple[list[int], list[int]]]], pad_id: int, packed: bool) -> SFTBatch:
    """Rows of examples -> one right-padded batch (padding is a segment of its own when packed)."""
    width = max(sum(len(x) for x, _ in row) for row in rows)
    inputs = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    segments = torch.full((len(rows), width), len(max(rows, key=len)), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for s, (x, y) in enumerate(row):
            inputs[r, at:at + len(x)] = torch.tensor(x)
            targets[r, at:at + len(y)] = torch.tensor(y)
            segments[r, at:at + len(x)] = s
            at += len(x)
    return SFTBatch(inputs, targets, segments if packed else None)


class ExampleSet:
    """Encoded examples and the rows they are batched in; serves the trainer as TrainBatches does:
    sample i is row perm_epoch[i % n] with the permutation drawn from (seed, epoch)."""

    def __init__(self, examples: list, seq_len: int, pad_id: int, packed: bool, seed: int, vocab_size: int):
        self.examples, self.packed, self.pad_id, self.seed = examples, packed, pad_id, seed
        self.rows = pack(examples, seq_len) if packed else [[i] for i in range(len(examples))]
        self.vocab_size = vocab_size
        self._epoch, self._perm = -1, None

    def __len__(self) -> int:
        return len(self.rows)

    def _row(self, i: int) -> list:
        epoch, k = divmod(i, len(self.rows))
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
        return [self.examples[j] for j in self.rows[int(self._perm[k])]]

    def _collate(self, rows: list[list]) -> SFTBatch:
        return collate(rows, self.pad_id, self.packed)

    def batch(self, first: int, count: int) -> SFTBatch:
        return self._collate([self._row(i) for i in range(first, first + count)])

    def micro_batch(self, seen: int, global_batch: int, rank: int, world: int, micro: int, size: int) -> SFTBatch:
        """The same slicing of the global batch as train/data.TrainBatches."""
        return self.batch(seen + rank * (global_batch // world) + micro * size, size)

    def validation_batches(self, n: int, rank: int, world: int, size: int) -> list[SFTBatch]:
        """Rows rank, rank + world, ... of the first n (all rows when n covers them), in file order."""
        mine = [[self.examples[j] for j in self.rows[i]] for i in range(rank, min(n, len(self.rows)), world)]
        return [self._collate(mine[i:i + size]) for i in range(0, len(mine), size)]


def split_held_out(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out): a seeded choice of round(fraction * n) records (at least 1 when fraction > 0)."""
    if fraction <= 0:
        return records, []
    n_val = max(1, round(fraction * len(records)))
    if n_val >= len(records):
        raise DataError(f"--val-fraction {fraction} leaves no training examples out of {len(records)}")
    chosen = set(np.random.default_rng([seed, 7]).choice(len(records), n_val, replace=False).tolist())
    return [r for i, r in enumerate(records) if i not in chosen], [r for i, r in enumerate(records) if i in chosen]


def load_sft(path, tokenizer, seq_len: int) -> list[tuple[list[int], list[int]]]:
    """Every line of an SFT JSONL file -> (inputs, targets) examples; errors name the line."""
    examples = []
    for n, record in read_jsonl(path):
        ids, trained = encode_record(tokenizer, record, f"{path}:{n}")
        examples.append(to_example(ids, trained, seq_len))
    return examples
