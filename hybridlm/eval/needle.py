"""Long-context probes in the style of RULER (Hsieh et al. 2024), generated on the fly.

A haystack of real prose (the default corpus: Python's pydoc topics, sentence by sentence) holds
one or more needles; the prompt ends with a question whose answer only the needles give. The model
answers greedily; a probe passes when its output contains the expected value (RULER's string match).
  single    one needle "The special magic number for <key> is <7 digits>."
  multikey  `n_keys` needles with different keys and values; the question asks for one of them
  variable  variable tracking: "VAR A = 3141592." then a chain "VAR B = VAR A." ... spread through
            the haystack; the question asks for the value of the chain's last variable
A grid runs every context length (prompt tokens) x needle depth (0 = start of the haystack,
1 = its end) `trials` times with different seeds; `heatmap` draws the grid as a PNG.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..generation import SamplingConfig, generate

KINDS = ("single", "multikey", "variable")
_WORDS = ("apple", "river", "falcon", "copper", "meadow", "lantern", "orbit", "violet", "harbor", "cedar")


def filler_sentences(max_chars: int = 400_000) -> list[str]:
    """Sentences of the default corpus's prose (pydoc topics), in a fixed order."""
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))[:max_chars]
    text = re.sub(r"\s+", " ", text)
    return [s.strip() + " " for s in re.split(r"(?<=[.!?]) ", text) if len(s.strip()) > 20]


@dataclass
class Probe:
    prompt: str
    answer: str
    length: int  # prompt tokens
    depth: float


def _needles(kind: str, rng: random.Random, n_keys: int, chain: int) -> tuple[list[str], str, str]:
    """(needle sentences in order, question, expected answer)."""
    value = lambda: str(rng.randrange(1_000_000, 10_000_000))  # noqa: E731
    if kind == "single":
        key, v = rng.choice(_WORDS), value()
        return [f"The special magic number for {key} is {v}. "], \
            f"What is the special magic number for {key}? The special magic number for {key} is", v
    if kind == "multikey":
        keys = rng.sample(_WORDS, n_keys)
        values = [value() for _ in keys]
        ask = rng.randrange(n_keys)
        return [f"The special magic number for {k} is {v}. " for k, v in zip(keys, values)], \
            f"What is the special magic number for {keys[ask]}? The special magic number for {keys[ask]} is", values[ask]
    if kind == "variable":
        names = [f"X{rng.randrange(100, 999)}{chr(65 + i)}" for i in range(chain)]
        v = value()
        sentences = [f"VAR {names[0]} = {v}. "] + [f"VAR {b} = VAR {a}. " for a, b in zip(names, names[1:])]
        return sentences, f"What is the value of VAR {names[-1]}? The value of VAR {names[-1]} is", v
    raise ValueError(f"probe kind must be one of {KINDS}, not {kind!r}")


def make_probe(encode: Callable[[str], list[int]], sentences: Sequence[str], length: int, depth: float,
               kind: str = "single", seed: int = 0, n_keys: int = 4, chain: int = 4) -> Probe:
    """A prompt of about `length` tokens with the needle(s) at `depth` of the haystack (the other
    needles of multikey/variable spread evenly after it)."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    rng = random.Random(seed)
    needles, question, answer = _needles(kind, rng, n_keys, chain)
    fixed = len(encode("".join(needles) + "\n" + question))
    budget = length - fixed
    if budget < 0:
        raise ValueError(f"a {kind} probe needs more than {length} tokens")
    start = rng.randrange(len(sentences))
    hay, sizes, used = [], [], 0
    for i in range(len(sentences)):
        s = sentences[(start + i) % len(sentences)]
        n = len(encode(s))
        if used + n > budget:  # too long for what is left: a later, shorter sentence may fit
            if budget - used < 8:
                break
            continue
        hay.append(s)
        sizes.append(n)
        used += n
    # needle k goes at the sentence boundary nearest to depth + k * (1 - depth) / len(needles) of
    # the haystack's tokens
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    slots = []
    for k in range(len(needles)):
        target = used * (depth + k * (1.0 - depth) / len(needles))
        slots.append(min(range(len(bounds)), key=lambda j: abs(bounds[j] - target)))
    parts = list(hay)
    for k in reversed(range(len(needles))):
        parts.insert(slots[k], needles[k])
    prompt = "".join(parts) + "\n" + question
    return Probe(prompt, answer, len(encode(prompt)), depth)


@dataclass
class NeedleGrid:
    kind: str
    lengths: list[int]
    depths: list[float]
    accuracy: list[list[float]]  # [length][depth]: share of trials whose output held the answer
    trials: int
    outputs: list[dict] = field(default_factory=list)  # per probe: length, depth, seed, answer, output

    def metrics(self) -> dict:
        flat = [a for row in self.accuracy for a in row]
        return {"needle_accuracy": sum(flat) / len(flat), "kind": self.kind, "lengths": self.lengths,
                "depths": self.depths, "accuracy_grid": self.accuracy, "trials": self.trials}


def run_grid(model, tokenizer, lengths: Sequence[int], depths: Sequence[float], kind: str = "single",
             trials: int = 1, max_new_tokens: int = 12, seed: int = 0,
             progress: Callable[[Iterable], Iterable] | None = None) -> NeedleGrid:
    """Every (length, depth, trial) probe answered greedily by `model`."""
    limit = model.config.max_seq_len
    too_long = [n for n in lengths if n + max_new_tokens > limit]
    if too_long:
        raise ValueError(f"context lengths {too_long} + {max_new_tokens} new tokens exceed the model's context ({limit})")
    encode = lambda t: tokenizer.encode(t, add_bos=False)  # noqa: E731
    sentences = filler_sentences()
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop=("\n",))
    jobs = [(li, di, t) for li in range(len(lengths)) for di in range(len(depths)) for t in range(trials)]
    hits = [[0] * len(depths) for _ in lengths]
    outputs = []
    for li, di, t in (progress or iter)(jobs):
        probe = make_probe(encode, sentences, lengths[li], depths[di], kind, seed=seed * 1000 + t)
        ids = tokenizer.encode(probe.prompt, add_bos=None)
        text = generate(model, [ids], sampling, decode=tokenizer.decode).texts[0]
        ok = probe.answer in text
        hits[li][di] += ok
        outputs.append({"length": lengths[li], "depth": depths[di], "trial": t, "answer": probe.answer,
                        "output": text, "passed": ok})
    return NeedleGrid(kind, list(lengths), list(depths), [[h / trials for h in row] for row in hits], trials, outputs)


def heatmap(grids: Sequence[tuple[str, NeedleGrid]], path: str | Path) -> Path:
    """One panel per (title, grid): accuracy by context length (x) and depth (y); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..checkpoints.atomic import atomic_path

    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 3.6), squeeze=False)
    for ax, (title, g) in zip(axes[0], grids):
        data = [[g.accuracy[li][di] for li in range(len(g.lengths))] for di in range(len(g.depths))]
        im = ax.imshow(data, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        ax.set_xticks(range(len(g.lengths)), [str(n) for n in g.lengths])
        ax.set_yticks(range(len(g.depths)), [f"{d:.0%}" for d in g.depths])
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("needle depth")
        ax.set_title(f"{title}\n{g.kind}, {g.trials} trial(s)", fontsize=9)
        for di, row in enumerate(data):
            for li, v in enumerate(row):
                ax.text(li, di, f"{v:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
