"""SmolLM2-135M's perplexity on the held-out slice of the default corpus: hybridlm's sliding-window
scorer (eval/perplexity.py) beside transformers' on the same GGUF, tokens and windows.

    python -m bench.eval_perplexity [--model smollm2-135m] [--tokens 4096] [--window 1024] [--stride 512]
                                    [--threads 2]

The held-out slice is compress.calibration.heldout_text (every 4th pydoc topic, never used for
calibration). transformers loads the same GGUF (`from_pretrained(dir, gguf_file=...)`, dequantized
to float32) and is scored with the loop of its documentation ("Perplexity of fixed-length models"):
labels masked with -100 outside each window's new tokens, each window's mean loss weighted by the
labels it scored. Progress on stderr; a table, then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from .common import emit_json, environment, print_table, progress


def transformers_perplexity(model, ids: torch.Tensor, window: int, stride: int) -> tuple[float, int]:
    """(perplexity, scored tokens) by the transformers documentation's loop."""
    nll, count, prev_end = 0.0, 0, 0
    n = ids.shape[1]
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target = input_ids.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target).loss
        scored = int((target[:, 1:] != -100).sum())  # the model shifts labels by one
        nll += loss.item() * scored
        count += scored
        prev_end = end
        if end == n:
            break
    return math.exp(nll / count), count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens of the held-out slice scored")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--stride", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    from hybridlm.checkpoints.registry import load_model, resolve_gguf
    from hybridlm.compress.calibration import heldout_text
    from hybridlm.eval.perplexity import perplexity

    lm = load_model(args.model)
    text = heldout_text()
    ids = lm.tokenizer.encode(text)[:args.tokens]
    n_bytes = len(lm.tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8"))
    progress(f"hybridlm: {len(ids)} tokens, window {args.window}, stride {args.stride}")
    start = time.perf_counter()
    ours = perplexity(lm.model, ids, args.window, args.stride, n_bytes=n_bytes)
    ours_s = time.perf_counter() - start
    gguf = resolve_gguf(args.model)
    progress("transformers ...")
    hf = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    start = time.perf_counter()
    theirs, their_tokens = transformers_perplexity(hf, torch.tensor([ids]), args.window, args.stride)
    theirs_s = time.perf_counter() - start
    rows = [{"engine": "hybridlm", "perplexity": ours.perplexity, "tokens": ours.tokens, "bits_per_byte": ours.bits_per_byte,
             "seconds": ours_s},
            {"engine": "transformers", "perplexity": theirs, "tokens": their_tokens, "bits_per_byte": None,
             "seconds": theirs_s}]
    print_table(rows, ["engine", "perplexity", "tokens", "bits_per_byte", "seconds"])
    rel = abs(ours.perplexity - theirs) / theirs
    print(f"relative difference {rel:.2e}")
    emit_json({"bench": "eval_perplexity", "model": args.model, "window": args.window, "stride": args.stride,
               "rows": rows, "relative_difference": rel, "env": environment()})


if __name__ == "__main__":
    main()
