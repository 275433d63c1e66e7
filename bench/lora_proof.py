"""Does LoRA fine-tuning teach SmolLM2-135M something, in a few CPU minutes?

An instruction set is built from the default corpus: for public top-level functions of the standard
library with a docstring, the question "What does the Python function MODULE.NAME do?" is answered by
the docstring's first paragraph. Functions are split by a hash of their name into training and
held-out questions (held-out functions are never trained on). The base model's loss on the held-out
answers (assistant tokens only) is measured, LoRA adapters are trained with `hybridlm finetune lora`'s
library call, and the held-out loss is measured again, with a few greedy answers before and after.

    python -m bench.lora_proof [--steps 60] [--threads 2] [--out out/lora_proof]

Progress on stderr; a table and the answers, then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import time
import zlib
from pathlib import Path

import torch

from bench.common import emit_json, environment, print_table, progress


def stdlib_instructions(max_chars: int = 240) -> list[dict]:
    """(module.name, answer) conversations from the standard library's function docstrings."""
    from hybridlm.data.default_corpus import code_files, stdlib_dir

    root, out, seen = stdlib_dir(), [], set()
    for path in sorted(code_files()):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        if any(part.startswith("_") for part in module.split(".")):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            answer = re.sub(r"\s+", " ", doc.split("\n\n")[0]).strip() if doc else ""
            name = f"{module}.{node.name}"
            if not 20 <= len(answer) <= max_chars or name in seen:
                continue
            seen.add(name)
            out.append({"name": name, "messages": [
                {"role": "user", "content": f"What does the Python function {name} do?"},
                {"role": "assistant", "content": answer}]})
    return out


def split(records: list[dict], held_out_every: int = 10) -> tuple[list[dict], list[dict]]:
    held = [r for r in records if zlib.crc32(r["name"].encode()) % held_out_every == 0]
    return [r for r in records if zlib.crc32(r["name"].encode()) % held_out_every != 0], held


def write_jsonl(records: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in records))


def held_out_loss(model, val_set) -> float:
    from hybridlm.finetune.sft import SFTObjective

    total, count = 0.0, 0
    with torch.no_grad():
        for batch in val_set.validation_batches(len(val_set), 0, 1, 8):
            s, n = SFTObjective().eval_sums(model, batch)
            total, count = total + s, count + n
    return total / count


def answers(model, tokenizer, questions: list[dict], max_new: int) -> list[str]:
    from hybridlm.generation import SamplingConfig, generate

    out = []
    for q in questions:
        ids = tokenizer.encode(tokenizer.apply_chat_template(q["messages"][:1]))
        with torch.no_grad():
            res = generate(model.eval(), [ids], SamplingConfig(max_new_tokens=max_new, temperature=0,
                                                               eos_token_ids=tokenizer.eos_token_ids))
        out.append(tokenizer.decode(res.tokens[0], skip_special_tokens=True).strip())
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--train-examples", type=int, default=480, help="training conversations used (a seeded sample)")
    p.add_argument("--held-out", type=int, default=48, help="held-out conversations evaluated")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--show", type=int, default=3, help="held-out answers shown before and after")
    p.add_argument("--out", default="out/lora_proof")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from hybridlm.checkpoints.registry import load_model
    from hybridlm.finetune.api import FinetuneConfig, build
    from hybridlm.finetune.lora import LoraConfig
    from hybridlm.finetune.peft_format import load_adapter
    from hybridlm.train import TrainConfig, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = stdlib_instructions()
    train_records, held = split(records)
    train_records = random.Random(0).sample(train_records, min(args.train_examples, len(train_records)))
    held = random.Random(1).sample(held, min(args.held_out, len(held)))
    write_jsonl(train_records, out / "train.jsonl")
    write_jsonl(held, out / "held_out.jsonl")
    progress(f"lora_proof: {len(records)} stdlib functions with docstrings; {len(train_records)} train, {len(held)} held out")
    tcfg = TrainConfig(preset=args.model, data_dir=str(out / "train.jsonl"), out_dir=str(out / "run"),
                       max_steps=args.steps, seq_len=256, micro_batch_size=8, lr=args.lr, warmup_steps=5,
                       weight_decay=0.0, eval_every=0, eval_sequences=len(held), save_every=0, plot=False,
                       threads=args.threads, seed=0)
    fcfg = FinetuneConfig("lora", args.model, str(out / "train.jsonl"), val_data=str(out / "held_out.jsonl"),
                          lora=LoraConfig(r=args.r, alpha=2 * args.r, targets=("q", "k", "v", "o", "gate", "up", "down")))
    model, recipe, info = build(fcfg, tcfg)
    tokenizer = load_model(args.model, dtype=torch.float32).tokenizer
    from hybridlm.nn.lora import adapters_disabled

    start = time.perf_counter()
    with adapters_disabled(model):
        before = held_out_loss(model.eval(), recipe.val_data)
        before_answers = answers(model, tokenizer, held[:args.show], 40)
    progress(f"lora_proof: held-out loss before {before:.4f} ({time.perf_counter() - start:.0f} s); training")
    if (out / "run").exists():
        import shutil

        shutil.rmtree(out / "run")
    result = train(tcfg, model=model, recipe=recipe)
    fresh = load_model(args.model, dtype=torch.float32).model
    load_adapter(fresh, out / "run" / "adapter")  # what a user gets back from the PEFT files
    after = held_out_loss(fresh.eval(), recipe.val_data)
    after_answers = answers(fresh, tokenizer, held[:args.show], 40)
    rows = [{"": "base (adapters off)", "held_out_loss": before},
            {"": f"LoRA r={args.r}, {args.steps} steps", "held_out_loss": after}]
    print_table(rows, ["", "held_out_loss"])
    for q, a, b in zip(held[:args.show], before_answers, after_answers):
        print(f"\nQ: {q['messages'][0]['content']}\n   reference: {q['messages'][1]['content']}\n"
              f"   before: {a}\n   after:  {b}")
    emit_json({"bench": "lora_proof", "model": args.model, "held_out_loss_before": before,
               "held_out_loss_after": after, "train_examples": len(train_records), "held_out": len(held),
               "steps": args.steps, "train_s": result.elapsed_s, "tokens_per_s": result.tokens_per_s,
               "memory": info["memory"], "lora": {"r": args.r, "alpha": 2 * args.r, "lr": args.lr},
               "examples": [{"question": q["messages"][0]["content"], "reference": q["messages"][1]["content"],
                             "before": a, "after": b} for q, a, b in zip(held, before_answers, after_answers)],
               **environment()})


if __name__ == "__main__":
    main()
