"""Int8 KV cache on SmolLM2-135M: logits and perplexity against the float32 cache, and bytes.

    python -m bench.kv_quant [--model smollm2-135m] [--tokens 512,2048] [--decode 64] [--threads 2]

For each length T: the first T held-out tokens of the default corpus go through the model with a
float32 cache and with an int8 cache (kv_quant.py). The int8 cache quantizes each token's K and V
when it is appended, before anything attends over it, so one prefill of T tokens yields exactly
the logits token-by-token decoding would (tests/test_kv_quant.py holds that in float64); the last
--decode tokens are nevertheless decoded one by one, as `generate` does. Reported: max and mean
|logit difference| (and relative to the float logits' standard deviation), top-1 agreement,
perplexity of both over the T - 1 scored tokens, the bytes of the two caches, and the mean time
of one decode step with each (provisional: the int8 slot dequantizes everything it holds at every
step, in PyTorch; no fused int8 attention kernel reads the codes directly yet).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch.nn import functional as F

from .common import emit_json, environment, print_table, progress
from .w8a8 import cpu_model


def run_cache(model, ids: torch.Tensor, kv_dtype: str, decode: int):
    """Logits (1, T, V) of ids (1, T) through a static cache: a prefill, then `decode` single
    steps; also the cache's bytes and the mean seconds of one decode step (full logits each)."""
    t = ids.shape[1]
    cache = model.new_cache(1, kind="static", max_len=t, kv_dtype=kv_dtype)
    with torch.no_grad():
        out = [model(ids[:, :t - decode], cache)]
        start = time.perf_counter()
        for i in range(t - decode, t):
            out.append(model(ids[:, i:i + 1], cache))
        step_s = (time.perf_counter() - start) / max(decode, 1)
    return torch.cat(out, dim=1), cache.nbytes(), step_s


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", default="512,2048", help="comma-separated sequence lengths")
    ap.add_argument("--decode", type=int, default=64, help="tokens at the end decoded one at a time")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from hybridlm.checkpoints.registry import load_model
    from hybridlm.compress.calibration import heldout_text

    loaded = load_model(args.model, dtype=torch.float32)
    model = loaded.model.eval()
    all_ids = loaded.tokenizer.encode(heldout_text())
    rows = []
    for t in [int(x) for x in args.tokens.split(",")]:
        ids = torch.tensor([all_ids[:t]])
        progress(f"{t} tokens ...")
        ref, ref_bytes, ref_step = run_cache(model, ids, "float", min(args.decode, t - 1))
        got, int8_bytes, int8_step = run_cache(model, ids, "int8", min(args.decode, t - 1))
        diff = (got - ref).abs()
        scale = ref.std().item()
        targets = ids[0, 1:]
        nll_ref = F.cross_entropy(ref[0, :-1], targets).item()
        nll_int8 = F.cross_entropy(got[0, :-1], targets).item()
        rows.append({"tokens": t, "max_diff": diff.max().item(), "mean_diff": diff.mean().item(),
                     "max_rel_std": diff.max().item() / scale, "mean_rel_std": diff.mean().item() / scale,
                     "top1_agree": (got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
                     "ppl_float": math.exp(nll_ref), "ppl_int8": math.exp(nll_int8),
                     "ppl_delta": math.exp(nll_int8) / math.exp(nll_ref) - 1,
                     "cache_mib_float": ref_bytes / 2**20, "cache_mib_int8": int8_bytes / 2**20,
                     "bytes_ratio": int8_bytes / ref_bytes,
                     "decode_ms_float": ref_step * 1e3, "decode_ms_int8": int8_step * 1e3})
    shown = [{**r, "max_diff": f"{r['max_diff']:.4f}", "mean_diff": f"{r['mean_diff']:.5f}",
              "top1_agree": f"{r['top1_agree']:.2%}", "ppl_delta": f"{r['ppl_delta']:+.3%}",
              "bytes_ratio": f"{r['bytes_ratio']:.3f}", "decode_ms_float": f"{r['decode_ms_float']:.1f}",
              "decode_ms_int8": f"{r['decode_ms_int8']:.1f}"} for r in rows]
    print_table(shown, ["tokens", "max_diff", "mean_diff", "top1_agree", "ppl_float", "ppl_int8", "ppl_delta",
                        "cache_mib_float", "cache_mib_int8", "bytes_ratio", "decode_ms_float", "decode_ms_int8"])
    emit_json({"bench": "kv_quant", **environment(), "cpu_model": cpu_model(), "model": args.model,
               "decode_steps": args.decode, "results": rows})


if __name__ == "__main__":
    main()
