"""Generation tasks (GSM8K style) and code tasks (HumanEval/MBPP style): generate, then check.

Generation: the answer is extracted from the output (`number`: the last number, commas dropped, as
GSM8K's "#### 72" convention; `exact`: the whole output, stripped) and compared with the item's
answer extracted the same way: exact match.
Code: n samples per task run with the task's tests in the sandbox (sandbox.py); pass@k by the
unbiased estimator of Chen et al. 2021 (Codex paper, eq. 1): 1 - C(n - c, k) / C(n, k), with c of
the n samples passing, averaged over tasks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from ..generation import SamplingConfig, generate
from .sandbox import SandboxLimits, run_program, sandbox_report
from .tasks import CodeItem, GenItem

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
EXTRACTORS = ("number", "exact")


def extract_answer(text: str, how: str = "number") -> str | None:
    """The answer in a model output or an item's answer field; None when there is none."""
    if how == "exact":
        return text.strip()
    if how != "number":
        raise ValueError(f"answer extraction must be one of {EXTRACTORS}, not {how!r}")
    marked = "####" in text  # GSM8K's reference answers end "#### 72": the number right after the mark
    found = _NUMBER.findall(text.rsplit("####", 1)[1] if marked else text)
    if not found:
        return None
    value = (found[0] if marked else found[-1]).replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task: n samples, c correct (Chen et al. 2021, eq. 1, in its
    numerically stable product form)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def prompt_text(tokenizer, prompt: str, chat: bool) -> str:
    """The prompt as given, or wrapped in the model's chat template as one user turn."""
    if not chat:
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)


def complete(model, tokenizer, prompts: Sequence[str], sampling: SamplingConfig, chat: bool = False,
             batch_size: int = 8, progress: Callable[[Iterable], Iterable] | None = None) -> list[str]:
    """Generated text per prompt (stop strings cut), in batches of `batch_size`."""
    limit = model.config.max_seq_len
    encoded = []
    for i, p in enumerate(prompts):
        ids = tokenizer.encode(prompt_text(tokenizer, p, chat), add_bos=None)
        if len(ids) + sampling.max_new_tokens > limit:
            raise ValueError(f"prompt {i} ({len(ids)} tokens) + {sampling.max_new_tokens} new tokens is longer "
                             f"than the model's context ({limit})")
        encoded.append(ids)
    out = []
    starts = list(range(0, len(encoded), batch_size))
    for s in (progress or iter)(starts):
        result = generate(model, encoded[s:s + batch_size], sampling, decode=tokenizer.decode)
        out.extend(result.texts)
    return out


@dataclass
class GenResult:
    exact_match: float
    items: int
    outputs: list[str]
    extracted: list[str | None]

    def metrics(self) -> dict:
        return {"exact_match": self.exact_match, "items": self.items}


def evaluate_generation(model, tokenizer, items: Sequence[GenItem], sampling: SamplingConfig,
                        extract: str = "number", chat: bool = False, batch_size: int = 8,
                        progress=None) -> GenResult:
    outputs = complete(model, tokenizer, [it.prompt for it in items], sampling, chat, batch_size, progress)
    got = [extract_answer(o, extract) for o in outputs]
    hits = sum(g is not None and g == extract_answer(it.answer, extract) for g, it in zip(got, items))
    return GenResult(hits / len(items), len(items), outputs, got)


@dataclass
class CodeResult:
    pass_at: dict[int, float]  # k -> mean pass@k over tasks
    items: int
    samples: int  # per task
    passed: list[int]  # per task: samples that passed
    statuses: list[list[str]]  # per task, per sample: "passed", "failed", "timeout"
    sandbox: dict  # which sandbox layers were active

    def metrics(self) -> dict:
        return {**{f"pass@{k}": v for k, v in self.pass_at.items()}, "items": self.items, "samples": self.samples,
                "sandbox": self.sandbox}


def score_code(items: Sequence[CodeItem], completions: Sequence[Sequence[str]], ks: Sequence[int] = (1,),
               limits: SandboxLimits = SandboxLimits(), progress=None) -> CodeResult:
    """Run every completion (per item, n of them) with its item's tests in the sandbox."""
    n = len(completions[0])
    if any(len(c) != n for c in completions):
        raise ValueError("every task needs the same number of samples")
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ValueError(f"pass@k needs 1 <= k <= samples ({n}); got k = {bad}")
    statuses = []
    for item, samples in (progress or iter)(list(zip(items, completions))):
        statuses.append([run_program(item.program(c), limits).status for c in samples])
    passed = [sum(s == "passed" for s in row) for row in statuses]
    pass_at = {k: float(np.mean([pass_at_k(n, c, k) for c in passed])) for k in ks}
    report = sandbox_report()
    return CodeResult(pass_at, len(items), n, passed, statuses,
                      {"namespaces": report.namespaces, "nproc_binds": report.nproc_binds,
                       "audit_guard": report.audit_guard, "rlimits": report.rlimits})


def evaluate_code(model, tokenizer, items: Sequence[CodeItem], sampling: SamplingConfig, samples: int = 1,
                  ks: Sequence[int] = (1,), limits: SandboxLimits = SandboxLimits(), chat: bool = False,
                  batch_size: int = 8, progress=None) -> CodeResult:
    """Generate `samples` completions per task (greedy gives one distinct sample), then score them."""
    prompts = [it.prompt for it in items for _ in range(samples)]
    outs = complete(model, tokenizer, prompts, sampling, chat, batch_size, progress)
    per_item = [outs[i * samples:(i + 1) * samples] for i in range(len(items))]
    return score_code(items, per_item, ks, limits, progress)
