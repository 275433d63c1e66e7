"""`run_eval`: one task over one or more models -> result records (JSON) and a Markdown table.

Every record carries what is needed to reproduce it: the model and its config hash, the task
file's SHA-256, the seed, the options and the hybridlm version. The CLI (`hybridlm eval`) is a thin
layer over `EvalConfig` and `run_eval`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import __version__

TASKS = ("perplexity", "multiple-choice", "generation", "code", "needle")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EvalConfig:
    task: str  # one of TASKS
    file: str | None = None  # task file (JSONL; perplexity: text file or prepared shard directory)
    seed: int = 0  # sampling and few-shot selection
    dtype: str = "float32"  # weights
    skip_bad: bool = False  # drop malformed task lines (counted) instead of stopping
    limit: int | None = None  # first N items only
    # perplexity
    window: int = 1024  # tokens per window
    stride: int | None = None  # tokens between window starts (default window // 2)
    max_tokens: int | None = None  # score only the first N tokens of the text
    split: str = "val"  # shard directory split
    # multiple choice
    shots: int = 0  # few-shot examples per prompt
    examples: str | None = None  # JSONL of examples for the few-shot prompts
    impl: str = "cache"  # "cache" (context prefilled once) or "ref" (one forward per choice)
    # generation and code
    max_new_tokens: int = 256  # per output
    stop: tuple[str, ...] = ()  # stop strings
    chat: bool = False  # wrap prompts in the model's chat template
    extract: str = "number"  # answer extraction: "number" or "exact"
    temperature: float = 0.0  # 0 = greedy
    samples: int = 1  # code: completions per task
    k: tuple[int, ...] = (1,)  # code: pass@k values
    timeout_s: float = 10.0  # code: wall-clock limit per program
    batch_size: int = 8  # prompts generated together
    # needle
    needle_kind: str = "single"
    lengths: tuple[int, ...] = (256, 512, 1024)  # prompt tokens
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    trials: int = 1
    heatmap: str | None = None  # PNG path

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.task != "needle" and not self.file:
            raise ValueError(f"the {self.task} task needs --file")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {self.dtype!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")


def config_hash(model) -> str:
    cfg = getattr(model, "config", None)
    text = cfg.to_json() if hasattr(cfg, "to_json") else repr(cfg)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _bar(desc: str, show: bool, unit: str = "item") -> Callable:
    from tqdm import tqdm

    return lambda xs: tqdm(xs, desc=desc, unit=unit, file=sys.stderr, disable=not show, dynamic_ncols=True)


def _perplexity(lm, cfg: EvalConfig, show: bool) -> tuple[dict, str | None]:
    from .perplexity import perplexity, text_perplexity
    from .tasks import file_sha256

    path = Path(cfg.file)
    bar = _bar("perplexity", show, "window")
    if path.is_dir():  # a prepared shard directory: its tokens as they are
        from ..data.shards import TokenShards

        shards = TokenShards(path, cfg.split)
        if shards.vocab_size > lm.model.config.vocab_size:
            raise ValueError(f"{path} was tokenized with {shards.vocab_size} ids; the model has {lm.model.config.vocab_size}")
        n = len(shards) if cfg.max_tokens is None else min(len(shards), cfg.max_tokens)
        result = perplexity(lm.model, shards.window(0, n), cfg.window, cfg.stride, progress=bar)
        digest = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest() if (path / "manifest.json").is_file() else None
        return result.as_dict(), digest
    if not path.is_file():
        raise FileNotFoundError(f"text file or shard directory {path} does not exist")
    text = path.read_text(encoding="utf-8")
    result = text_perplexity(lm.model, lm.tokenizer, text, cfg.window, cfg.stride, max_tokens=cfg.max_tokens, progress=bar)
    return result.as_dict(), file_sha256(path)


def _items(cfg: EvalConfig, kind: str):
    from .tasks import read_task

    task = read_task(cfg.file, kind, cfg.skip_bad)
    items = task.items[:cfg.limit] if cfg.limit else task.items
    return task, items


def _sampling(cfg: EvalConfig):
    from ..generation import SamplingConfig

    return SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, stop=cfg.stop,
                          seed=cfg.seed if cfg.temperature > 0 else None)


def evaluate_one(lm, cfg: EvalConfig, show_progress: bool = True) -> dict:
    """One model (a checkpoints.registry.LoadedModel) on the task -> metrics and provenance."""
    start = time.perf_counter()
    extra: dict = {}
    if cfg.task == "perplexity":
        metrics, digest = _perplexity(lm, cfg, show_progress)
    elif cfg.task == "multiple-choice":
        from .multiple_choice import PromptFormat, evaluate_mc
        from .tasks import read_task

        task, items = _items(cfg, "multiple-choice")
        examples = read_task(cfg.examples, "multiple-choice").items if cfg.examples else ()
        if cfg.shots and not cfg.examples:
            raise ValueError("--shots needs --examples FILE (few-shot examples are never drawn from the test items)")
        res = evaluate_mc(lm.model, lm.tokenizer, items, PromptFormat(shots=cfg.shots, seed=cfg.seed), examples,
                          impl=cfg.impl, progress=_bar("multiple-choice", show_progress, "prompt"))
        metrics, digest = res.metrics(), task.sha256
        extra = {"skipped_lines": [n for n, _ in task.skipped]}
    elif cfg.task == "generation":
        from .generation_tasks import evaluate_generation

        task, items = _items(cfg, "generation")
        res = evaluate_generation(lm.model, lm.tokenizer, items, _sampling(cfg), cfg.extract, cfg.chat, cfg.batch_size,
                                  _bar("generation", show_progress, "batch"))
        metrics, digest = res.metrics(), task.sha256
        extra = {"skipped_lines": [n for n, _ in task.skipped],
                 "outputs": [{"line": it.line, "output": o, "extracted": e} for it, o, e in zip(items, res.outputs, res.extracted)]}
    elif cfg.task == "code":
        from .generation_tasks import evaluate_code
        from .sandbox import SandboxLimits

        task, items = _items(cfg, "code")
        limits = SandboxLimits(timeout_s=cfg.timeout_s, cpu_s=max(1, int(cfg.timeout_s) + 1))
        res = evaluate_code(lm.model, lm.tokenizer, items, _sampling(cfg), cfg.samples, cfg.k, limits, cfg.chat,
                            cfg.batch_size, _bar("code", show_progress))
        metrics, digest = res.metrics(), task.sha256
        extra = {"skipped_lines": [n for n, _ in task.skipped],
                 "statuses": {it.task_id: s for it, s in zip(items, res.statuses)}}
    else:
        from .needle import run_grid

        grid = run_grid(lm.model, lm.tokenizer, cfg.lengths, cfg.depths, cfg.needle_kind, cfg.trials, seed=cfg.seed,
                        progress=_bar("needle", show_progress, "probe"))
        metrics, digest = grid.metrics(), None
        extra = {"_grid": grid, "probes": grid.outputs}  # every probe's answer and output, for checking
    return {"model": lm.name, "source": str(lm.source), "config_hash": config_hash(lm.model), "task": cfg.task,
            "task_file": cfg.file, "task_sha256": digest, "seed": cfg.seed, "hybridlm_version": __version__,
            "seconds": time.perf_counter() - start, **metrics, "options": _options(cfg), **extra}


def _options(cfg: EvalConfig) -> dict:
    keep = {"perplexity": ("window", "stride", "max_tokens", "split"),
            "multiple-choice": ("shots", "examples", "impl", "limit"),
            "generation": ("max_new_tokens", "stop", "chat", "extract", "temperature", "limit"),
            "code": ("max_new_tokens", "stop", "chat", "temperature", "samples", "k", "timeout_s", "limit"),
            "needle": ("needle_kind", "lengths", "depths", "trials")}[cfg.task]
    d = asdict(cfg)
    return {k: d[k] for k in ("dtype", *keep)}


def run_eval(models: list[str], cfg: EvalConfig, show_progress: bool = True) -> list[dict]:
    """Load each model in turn (checkpoints.registry.load_model) and evaluate it. The task file is
    read and checked before the first model is loaded, so a bad file fails fast."""
    from ..checkpoints.registry import load_model
    from .tasks import read_task

    if not models:
        raise ValueError("name at least one model")
    kinds = {"multiple-choice": "multiple-choice", "generation": "generation", "code": "code"}
    if cfg.task in kinds:
        read_task(cfg.file, kinds[cfg.task], cfg.skip_bad)
    if cfg.examples:
        read_task(cfg.examples, "multiple-choice")
    if cfg.task == "perplexity" and not Path(cfg.file).exists():
        raise FileNotFoundError(f"text file or shard directory {cfg.file} does not exist")
    torch.manual_seed(cfg.seed)
    results, grids = [], []
    for name in models:
        lm = load_model(name, dtype=DTYPES[cfg.dtype])
        lm.model.eval()
        record = evaluate_one(lm, cfg, show_progress)
        grid = record.pop("_grid", None)
        if grid is not None:
            grids.append((lm.name, grid))
        results.append(record)
    if cfg.heatmap and grids:
        from .needle import heatmap

        heatmap(grids, cfg.heatmap)
    return results


METRIC_COLUMNS = {"perplexity": ("perplexity", "nll", "tokens", "bits_per_byte"),
                  "multiple-choice": ("accuracy", "accuracy_norm", "items"),
                  "generation": ("exact_match", "items"),
                  "code": None,  # pass@k columns depend on k
                  "needle": ("needle_accuracy",)}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def markdown_table(results: list[dict]) -> str:
    """One row per model, one column per metric (several models side by side)."""
    task = results[0]["task"]
    cols = METRIC_COLUMNS[task] or tuple(k for k in results[0] if k.startswith("pass@")) + ("items", "samples")
    head = ["model", *cols, "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        lines.append("| " + " | ".join([r["model"], *(_fmt(r.get(c)) for c in cols), f"{r['seconds']:.1f}"]) + " |")
    if task == "needle":
        for r in results:
            lines.append("")
            lines.append(f"{r['model']}: accuracy by depth (rows) and context tokens (columns)")
            lines.append("| depth | " + " | ".join(str(n) for n in r["lengths"]) + " |")
            lines.append("|" + "---|" * (len(r["lengths"]) + 1))
            for di, d in enumerate(r["depths"]):
                lines.append(f"| {d:.0%} | " + " | ".join(f"{r['accuracy_grid'][li][di]:.2f}" for li in range(len(r["lengths"]))) + " |")
    return "\n".join(lines)


def write_json(results: list[dict], path: str | Path) -> None:
    from ..checkpoints.atomic import atomic_file

    with atomic_file(path) as f:
        json.dump(results, f, indent=2, default=str)
        f.write("\n")
