"""`eval`: score models on a task file (perplexity, multiple choice, generation, code, needle probes),
run lm-eval's harness with the `hybridlm` model, or check a task file for contamination.

`hybridlm eval` takes three forms, so its arguments are parsed here rather than by the top-level
parser (lm-eval's own options must pass through untouched):
  hybridlm eval MODEL [MODEL ...] --task TASK ...
  hybridlm eval harness --tasks NAMES [lm-eval run options]
  hybridlm eval contamination --train DIR --task FILE
"""

from __future__ import annotations

import argparse
import json
import sys

_DESCRIPTION = """\
Evaluate one or more models (registry names, GGUF files, HF directories, quantized outputs) on a task;
several models are scored one after another and shown side by side.

tasks (--task):
  perplexity       sliding-window perplexity of a text file, or of a prepared shard directory (--split);
                   each window scores only tokens no earlier window scored (transformers' definition).
                   Metrics: perplexity, nll, tokens, bits_per_byte.
  multiple-choice  JSONL {"context", "choices", "answer"}: log-likelihood of each choice; accuracy and
                   accuracy_norm (per character). Few-shot: --shots K --examples FILE.
  generation       JSONL {"prompt", "answer"}: greedy output, answer extracted (--extract number|exact),
                   exact_match. --stop, --chat, --max-new-tokens.
  code             JSONL HumanEval {"task_id", "prompt", "test", "entry_point"} or MBPP {"prompt",
                   "test_list"}: completions run with the tests in a sandbox (no network, CPU/memory/file/
                   process limits, temp dir, --timeout); pass@k (--samples N --k 1,10, unbiased estimator).
  needle           needle-in-a-haystack probes generated on the fly (--needle-kind single|multikey|variable)
                   over --lengths x --depths; --heatmap PNG.

Malformed JSONL lines are reported with their line numbers and nothing is scored, unless --skip-bad.

other forms:
  hybridlm eval harness --tasks NAMES --model_args pretrained=MODEL [lm-eval run options]
      lm-eval's own CLI (lm-eval 0.4) with the `hybridlm` model registered and selected.
  hybridlm eval contamination --train DIR --task FILE [--n 13]
      task items sharing word n-grams with a training corpus (the data pipeline's decontamination code).
"""


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x.lower().replace("k", "")) * (1024 if x.lower().endswith("k") else 1)
                     for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def eval_parser() -> argparse.ArgumentParser:
    from ..eval.runner import DTYPES, TASKS

    p = argparse.ArgumentParser(prog="hybridlm eval", description=_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL", help="models to evaluate, one after another")
    p.add_argument("--task", required=True, choices=TASKS, help="what to measure (see above)")
    p.add_argument("--file", help="the task file (JSONL), or for perplexity a text file or shard directory")
    p.add_argument("--json", action="store_true", help="print one JSON object (one model) or a JSON list (several) "
                   "instead of the Markdown table")
    p.add_argument("--out", help="also write the JSON results to this file (atomically)")
    p.add_argument("--seed", type=int, default=0, help="sampling and few-shot selection (default 0)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="weights (default float32)")
    p.add_argument("--skip-bad", action="store_true", help="drop malformed task lines (reported) instead of stopping")
    p.add_argument("--limit", type=int, help="score only the first N items")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default 0 = torch's choice; 1 gives steady speed on a busy machine)")
    g = p.add_argument_group("perplexity")
    g.add_argument("--window", type=int, default=1024, help="tokens per window (default 1024)")
    g.add_argument("--stride", type=int, help="tokens between window starts (default window/2)")
    g.add_argument("--max-tokens", type=int, help="score only the first N tokens")
    g.add_argument("--split", default="val", help="split of a shard directory (default val)")
    g = p.add_argument_group("multiple choice")
    g.add_argument("--shots", type=int, default=0, help="few-shot examples per prompt (default 0)")
    g.add_argument("--examples", help="JSONL of few-shot examples (same format as the task)")
    g.add_argument("--impl", default="cache", choices=["cache", "ref"],
                   help="cache: each context prefilled once and shared by its choices; ref: one forward per choice")
    g = p.add_argument_group("generation and code")
    g.add_argument("--max-new-tokens", type=int, default=256, help="tokens per output (default 256)")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    g.add_argument("--extract", default="number", choices=["number", "exact"],
                   help="answer extraction: the last number (GSM8K) or the whole output (default number)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--samples", type=int, default=1, help="code: completions per task (default 1)")
    g.add_argument("--k", type=_ints, default=(1,), help="code: comma-separated pass@k values (default 1)")
    g.add_argument("--timeout", type=float, default=10.0, help="code: seconds per program (default 10)")
    g.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default 8)")
    g = p.add_argument_group("needle")
    g.add_argument("--needle-kind", default="single", choices=["single", "multikey", "variable"])
    g.add_argument("--lengths", type=_ints, default=(256, 512, 1024), help="prompt tokens, k = 1024 (default 256,512,1024)")
    g.add_argument("--depths", type=_floats, default=(0.0, 0.25, 0.5, 0.75, 1.0), help="needle depths in [0, 1]")
    g.add_argument("--trials", type=int, default=1, help="probes per cell (default 1)")
    g.add_argument("--heatmap", help="write the accuracy heatmap PNG here")
    return p


def contamination_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybridlm eval contamination",
                                description="Report the task items that share long word n-grams with a training corpus "
                                            "(normalised words, as the data pipeline's decontamination stage: one "
                                            "implementation).")
    p.add_argument("--train", required=True, help="training corpus: a file or folder of text, HTML, JSONL or parquet")
    p.add_argument("--task", required=True, help="task file (JSONL: every string field counts)")
    p.add_argument("--n", type=int, default=13, help="words per n-gram (default 13, GPT-3's choice)")
    p.add_argument("--min-shared", type=int, default=1, help="n-grams an item must share to be flagged (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def cmd_eval(args) -> int:
    argv = list(args.args)
    if argv[:1] == ["harness"]:
        from ..eval.harness import run_harness

        return run_harness(argv[1:])
    if argv[:1] == ["contamination"]:
        return _contamination(contamination_parser().parse_args(argv[1:]))
    return _evaluate(eval_parser().parse_args(argv))


def _evaluate(a) -> int:
    import torch

    from ..eval.runner import EvalConfig, markdown_table, run_eval, write_json

    if a.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {a.threads}")
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = EvalConfig(task=a.task, file=a.file, seed=a.seed, dtype=a.dtype, skip_bad=a.skip_bad, limit=a.limit,
                     window=a.window, stride=a.stride, max_tokens=a.max_tokens, split=a.split, shots=a.shots,
                     examples=a.examples, impl=a.impl, max_new_tokens=a.max_new_tokens, stop=tuple(a.stop),
                     chat=a.chat, extract=a.extract, temperature=a.temperature, samples=a.samples, k=a.k,
                     timeout_s=a.timeout, batch_size=a.batch_size, needle_kind=a.needle_kind, lengths=a.lengths,
                     depths=a.depths, trials=a.trials, heatmap=a.heatmap)
    results = run_eval(a.models, cfg, show_progress=not a.no_progress)
    for r in results:
        if r.get("skipped_lines"):
            print(f"hybridlm: skipped {len(r['skipped_lines'])} bad line(s): {r['skipped_lines'][:10]}", file=sys.stderr)
    if a.out:
        write_json(results, a.out)
    if a.json:
        print(json.dumps(results[0] if len(results) == 1 else results, default=str))
    else:
        print(markdown_table(results))
    if a.heatmap:
        print(f"wrote {a.heatmap}", file=sys.stderr)
    return 0


def _contamination(a) -> int:
    from ..eval.contamination import contamination

    report = contamination(a.train, a.task, a.n, a.min_shared)
    if a.json:
        print(json.dumps(report.as_dict()))
        return 0
    print(f"{len(report.contaminated)} of {report.items} task items share >= {a.min_shared} {a.n}-gram(s) with "
          f"{a.train} ({report.fraction:.1%}; {report.too_short} items shorter than {a.n} words cannot match)")
    for row in report.contaminated:
        print(f"  line {row['line']}: {row['shared_ngrams']} shared: {row['text'][:80]!r}")
    return 0


def register(sub) -> None:
    """Add `eval` to the `hybridlm` parser; its own arguments are parsed by cmd_eval."""
    p = sub.add_parser("eval", add_help=False, prefix_chars="\x00",
                       help="evaluate models: perplexity, multiple choice, generation, code, needle probes; "
                            "`eval harness` runs lm-eval; `eval contamination` (see `hybridlm eval --help`)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_eval)
