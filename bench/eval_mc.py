"""How long scoring multiple-choice items takes: hybridlm's scorer (each context prefilled once,
its choices batched through the cache) against lm-eval's HF backend on the same model, items and
machine, plus the one-forward-per-choice reference path.

    python -m bench.eval_mc [--model smollm2-135m] [--items 1000] [--choices 4] [--hf-batch 8]
                            [--ref-items 100] [--threads 2]

Items are HellaSwag-style and self-made from the default corpus (pydoc prose): the context is the
first half of a sentence, the right choice its second half, the others second halves of other
sentences. lm-eval reads them through a local task YAML (no hub); its HF backend loads the same
GGUF through transformers (`gguf_file`). Both score 0-shot with the same prompts, so accuracy and
per-choice log-likelihoods must agree: the largest difference is reported beside the times.
Progress on stderr; a table, then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import tempfile
import time
from pathlib import Path

import torch

from .common import emit_json, environment, print_table, progress


def make_items(n: int, n_choices: int, seed: int = 0) -> list[dict]:
    from hybridlm.eval.needle import filler_sentences

    rng = random.Random(seed)
    sentences = [s.strip() for s in filler_sentences() if 8 <= len(s.split()) <= 30]
    halves = []
    for s in sentences:
        words = s.split()
        cut = len(words) // 2
        halves.append((" ".join(words[:cut]), " ".join(words[cut:])))
    items = []
    for i in rng.sample(range(len(halves)), n):
        context, right = halves[i]
        others = [halves[j][1] for j in rng.sample(range(len(halves)), n_choices - 1) if j != i]
        while len(others) < n_choices - 1:
            others.append(halves[rng.randrange(len(halves))][1])
        answer = rng.randrange(n_choices)
        choices = others[:answer] + [right] + others[answer:]
        items.append({"context": context, "choices": choices, "answer": answer})
    return items


YAML = """task: bench_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def run_ours(model_name: str, path: Path, impl: str, limit: int | None) -> dict:
    from hybridlm.checkpoints.registry import load_model
    from hybridlm.eval.multiple_choice import evaluate_mc
    from hybridlm.eval.tasks import read_task

    lm = load_model(model_name)
    items = read_task(path, "multiple-choice").items[:limit]
    evaluate_mc(lm.model, lm.tokenizer, items[:5], impl=impl)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    res = evaluate_mc(lm.model, lm.tokenizer, items, impl=impl)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"engine": f"hybridlm ({impl})", "items": len(items), "seconds": seconds, "cpu_s": cpu,
            "items_per_s": len(items) / seconds,
            "accuracy": res.accuracy, "accuracy_norm": res.accuracy_norm, "_logprobs": res.logprobs}


def run_lm_eval_hf(gguf: Path, folder: Path, batch: int) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(gguf.parent), gguf_file=gguf.name, dtype="float32", batch_size=batch, device="cpu")
    start, cpu = time.perf_counter(), time.process_time()
    out = simple_evaluate(model=lm, tasks=["bench_mc"], batch_size=batch, device="cpu",
                          task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                          log_samples=True, bootstrap_iters=0)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    res = out["results"]["bench_mc"]
    samples = sorted(out["samples"]["bench_mc"], key=lambda s: s["doc_id"])
    lps = [[float(r[0][0]) for r in s["resps"]] for s in samples]
    return {"engine": f"lm-eval hf (batch {batch})", "items": len(samples), "seconds": seconds, "cpu_s": cpu,
            "items_per_s": len(samples) / seconds, "accuracy": res["acc,none"], "accuracy_norm": res["acc_norm,none"],
            "_logprobs": lps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--choices", type=int, default=4)
    ap.add_argument("--hf-batch", type=int, default=8, help="lm-eval HF backend batch size")
    ap.add_argument("--ref-items", type=int, default=100, help="items for the one-forward-per-choice path (0 = skip)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    from hybridlm.checkpoints.registry import resolve_gguf

    gguf = resolve_gguf(args.model)
    folder = Path(tempfile.mkdtemp(prefix="bench-eval-mc-"))
    os.environ["HF_DATASETS_CACHE"] = str(folder / "hf-cache")
    items = make_items(args.items, args.choices)
    (folder / "mc.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (folder / "bench_mc.yaml").write_text(YAML.format(data=folder / "mc.jsonl"))
    progress(f"{len(items)} items x {args.choices} choices in {folder}")
    rows = []
    progress("hybridlm (cache) ...")
    rows.append(run_ours(args.model, folder / "mc.jsonl", "cache", None))
    if args.ref_items:
        progress("hybridlm (ref) ...")
        rows.append(run_ours(args.model, folder / "mc.jsonl", "ref", args.ref_items))
    progress("lm-eval hf ...")
    rows.append(run_lm_eval_hf(gguf, folder, args.hf_batch))
    ours, hf = rows[0], rows[-1]
    diff = max(abs(a - b) for x, y in zip(ours["_logprobs"], hf["_logprobs"]) for a, b in zip(x, y))
    for r in rows:
        r.pop("_logprobs")
    print_table(rows, ["engine", "items", "seconds", "cpu_s", "items_per_s", "accuracy", "accuracy_norm"])
    ratio = hf["seconds"] / ours["seconds"]
    cpu_ratio = hf["cpu_s"] / ours["cpu_s"]
    print(f"hybridlm (cache) is {ratio:.2f}x lm-eval hf in wall time ({cpu_ratio:.2f}x in process CPU time) on "
          f"{args.items} items; max |log-likelihood difference| {diff:.2e}; load average {os.getloadavg()[0]:.1f}")
    emit_json({"bench": "eval_mc", "model": args.model, "items": args.items, "choices": args.choices,
               "rows": rows, "speedup_vs_lm_eval_hf": ratio, "cpu_speedup_vs_lm_eval_hf": cpu_ratio,
               "load_average": os.getloadavg(), "max_abs_loglik_diff": diff,
               "env": environment(), "cpu": _cpu_name()})


def _cpu_name() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    m = re.search(r"model name\s*:\s*(.+)", text)
    return m.group(1).strip() if m else None


if __name__ == "__main__":
    main()
