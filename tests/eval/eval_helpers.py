"""Helpers the evaluation tests share: self-made words, lines and multiple-choice files."""

import json
import random

WORDS = ("red green blue river stone cloud apple tiger piano window garden silver orange number "
         "python module class function return value list string error import").split()


def corpus_lines(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randrange(4, 14))) + "." for _ in range(n)]


def write_mc(path, n: int = 24, seed: int = 0, n_choices: int = 4) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        context = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 10))) + ":"
        choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 5))) for _ in range(n_choices)]
        rows.append({"context": context, "choices": choices, "answer": rng.randrange(n_choices)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows
