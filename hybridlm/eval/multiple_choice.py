"""Multiple choice by log-likelihood (HellaSwag, ARC, MMLU, PIQA, WinoGrande style).

Each choice is scored as the continuation `target_delimiter + choice` of the item's prompt; the
prediction is the choice with the highest log-likelihood (accuracy) or the highest log-likelihood
per character of the choice (length-normalised accuracy, lm-eval's `acc_norm`). k-shot prompts put
k examples (from a separate file, drawn with `seed`) before the item, each written as its context,
the delimiter and its correct choice, separated by `fewshot_delimiter`: lm-eval's layout, so a
task scored here and through the adapter (eval/harness.py) gives the same numbers.

Context and continuation are tokenized as lm-eval does (`encode_pair`): trailing spaces of the
context move to the continuation, the pair is encoded whole and the continuation is what follows
the context's own tokens, so a word is never split differently because of where the prompt ends.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from .loglikelihood import Score, score
from .tasks import MCItem


@dataclass
class PromptFormat:
    shots: int = 0  # examples before each item
    target_delimiter: str = " "  # between the context and a choice
    fewshot_delimiter: str = "\n\n"  # between examples, and before the item
    seed: int = 1234  # which examples (lm-eval's default fewshot seed)


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: (context ids, continuation ids)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    whole, ctx = encode(context + continuation), encode(context)
    return ctx, whole[len(ctx):]


def fewshot_prefix(examples: Sequence[MCItem], fmt: PromptFormat, rng: random.Random) -> str:
    if fmt.shots == 0:
        return ""
    if fmt.shots > len(examples):
        raise ValueError(f"{fmt.shots}-shot prompts need {fmt.shots} examples; the examples file has {len(examples)}")
    chosen = rng.sample(list(examples), fmt.shots)
    return "".join(ex.context + fmt.target_delimiter + ex.choices[ex.answer] + fmt.fewshot_delimiter for ex in chosen)


def build_requests(items: Sequence[MCItem], encode: Callable[[str], list[int]], fmt: PromptFormat,
                   examples: Sequence[MCItem] = (), empty_context: Sequence[int] = ()) -> list[list[tuple]]:
    """Per item, one (context ids, continuation ids) request per choice. empty_context: the ids
    that stand in for an empty context (lm-eval uses the EOS token)."""
    rng = random.Random(fmt.seed)
    out = []
    for item in items:
        prompt = fewshot_prefix(examples, fmt, rng) + item.context
        reqs = []
        for choice in item.choices:
            ctx, cont = encode_pair(encode, prompt, fmt.target_delimiter + choice)
            if not ctx:
                ctx = list(empty_context)
                if not ctx:
                    raise ValueError(f"line {item.line}: the context is empty and the tokenizer has no EOS "
                                     f"token to stand in for it")
            if not cont:
                raise ValueError(f"line {item.line}: a choice encodes to no tokens")
            reqs.append((ctx, cont))
        out.append(reqs)
    return out


@dataclass
class MCResult:
    accuracy: float
    accuracy_norm: float
    items: int
    predictions: list[int]  # argmax of log-likelihood, per item
    logprobs: list[list[float]]  # per item, per choice

    def metrics(self) -> dict:
        return {"accuracy": self.accuracy, "accuracy_norm": self.accuracy_norm, "items": self.items}


def mc_metrics(items: Sequence[MCItem], scores: Sequence[Sequence[Score]]) -> MCResult:
    """accuracy: argmax log-likelihood == answer; accuracy_norm: argmax log-likelihood / len(choice)
    in characters (lm-eval's acc_norm; ties go to the first choice, as numpy's argmax does)."""
    correct = correct_norm = 0
    preds, lps = [], []
    for item, item_scores in zip(items, scores):
        lp = [s.logprob for s in item_scores]
        norm = [v / max(1, len(c)) for v, c in zip(lp, item.choices)]
        pred = max(range(len(lp)), key=lambda i: (lp[i], -i))
        pred_norm = max(range(len(norm)), key=lambda i: (norm[i], -i))
        correct += pred == item.answer
        correct_norm += pred_norm == item.answer
        preds.append(pred)
        lps.append(lp)
    n = len(preds)
    return MCResult(correct / n, correct_norm / n, n, preds, lps)


def evaluate_mc(model, tokenizer, items: Sequence[MCItem], fmt: PromptFormat = PromptFormat(),
                examples: Sequence[MCItem] = (), impl: str = "cache",
                progress: Callable[[Iterable], Iterable] | None = None) -> MCResult:
    """Score every item's choices with `model` (ours: impl "cache" or "ref"). Texts are encoded with
    the tokenizer's own BOS rule, as lm-eval's HF backend (and our adapter, eval/harness.py) does."""
    encode = lambda text: tokenizer.encode(text)  # noqa: E731
    bos, eos = tokenizer.bos_token_id, list(getattr(tokenizer, "eos_token_ids", ()))[:1]
    per_item = build_requests(items, encode, fmt, examples, [bos] if bos is not None else eos)  # lm-eval's prefix token
    flat = [r for reqs in per_item for r in reqs]
    scores = score(model, flat, impl=impl, progress=progress)
    grouped, i = [], 0
    for reqs in per_item:
        grouped.append(scores[i:i + len(reqs)])
        i += len(reqs)
    return mc_metrics(items, grouped)
