"""Speculative decoding at batch 1: how much faster than plain greedy decoding, and why.

    python -m bench.speculative [--model smollm2-135m] [--threads 2] [--new-tokens 128]
                                [--docs assert,del,return] [--k 3,5,8] [--draft-blocks 20]
                                [--draft MODEL] [--weights auto|float32] [--quant-act fast|exact]

The task is input-grounded, where prompt lookup should shine: the chat model is given a section
of Python's bundled documentation (pydoc_data) and asked to quote its opening paragraph. Every
configuration decodes the same prompts greedily (ignoring EOS, so all produce --new-tokens), and
must produce exactly its baseline's greedy tokens (same_tokens counts the prompts where it did;
the baseline is plain `generate`, or for engine rows the engine without speculation, whose paged
attention rounds differently from `generate`'s).

Rows: plain `generate`; prompt lookup for each k; prompt lookup at the middle k with the batched
verification attention (one attention call for the k + 1 tokens instead of one per token, as a
one-token step does: generation/verify_attention.py); a layer-skip draft (the model's own first
--draft-blocks blocks and its head, sharing weights) at the smallest k; a separate draft model
with --draft (a smaller model with the same tokenizer; none ships offline for SmolLM2); and the
serving engine without and with prompt lookup at the middle k (one request at a time, as a
batch-1 client sees it). Decode tok/s counts the tokens after the first over the time after the
first (engine rows: every token over the whole request, prefill included, so compare engine rows
with each other); speedup is that rate over the baseline's (plain, or the engine without
speculation), medians over the documents. --weights auto runs a GGUF in its own quantized precision
on native kernels (what `hybridlm generate` does by default on a CPU); float32 dequantizes and
packs the linears. With int8 activations (--quant-act fast, the CLI's default) the batched
verification attention's float rounding flips activation codes and can change greedy tokens
(same_tokens < documents on that row); the default decode-like attention keeps every row exact.
"""

from __future__ import annotations

import argparse
import time

import torch

from .common import emit_json, environment, median, print_table, progress


def prompts_for(tokenizer, docs: list[str]) -> list[list[int]]:
    from pydoc_data.topics import topics

    out = []
    for name in docs:
        if name not in topics:
            raise SystemExit(f"no pydoc topic {name!r}; some that exist: {', '.join(sorted(topics)[:12])}")
        text = topics[name].strip()
        messages = [{"role": "user", "content": f"Here is a section of the Python documentation:\n\n{text}\n\n"
                                                "Quote its first paragraph exactly."}]
        out.append(tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True)))
    return out


def load(name: str, weights: str, quant_act: str):
    from hybridlm.checkpoints.registry import load_model
    from hybridlm.nn.packed_linear import pack_linears
    from hybridlm.nn.quant import set_quant_modes

    loaded = load_model(name, dtype=torch.float32, keep_quantized=weights == "auto")
    loaded.model.eval()
    set_quant_modes(loaded.model, act_mode=quant_act)
    pack_linears(loaded.model, "auto")  # packs whatever plain float32 linears remain
    return loaded


def run_config(label, k, model, prompts, sampling, proposer=None, verify_attention="decode") -> dict:
    from hybridlm.generation import generate
    from hybridlm.generation.speculative import speculative_generate

    rates, totals, results = [], [], []
    for ids in prompts:
        start = time.perf_counter()
        if proposer is None:
            result = generate(model, [ids], sampling, cache_kind="static")
        else:
            result = speculative_generate(model, proposer, [ids], sampling, k=k, cache_kind="static",
                                          verify_attention=verify_attention)
        totals.append(time.perf_counter() - start)
        rates.append(result.stats.decode_tokens_per_s)
        results.append(result)
    row = {"config": label, "k": k, "decode_tok_s": median(rates), "total_s": sum(totals),
           "tokens": [r.tokens[0] for r in results]}
    if proposer is not None:
        stats = [r.stats for r in results]
        row["acceptance"] = sum(s.accepted for s in stats) / max(1, sum(s.proposed for s in stats))
        row["tokens_per_step"] = median([s.tokens_per_step for s in stats])
    progress(f"{label} k={k}: {row['decode_tok_s']:.1f} tok/s")
    return row


def run_engine(label, k, model, tokenizer, prompts, new_tokens) -> dict:
    from hybridlm.engine import Engine, EngineConfig, RequestParams

    config = EngineConfig(kv_memory=64 << 20, max_num_seqs=4,
                          speculative="prompt-lookup" if k else None, num_speculative_tokens=k or 4)
    engine = Engine(model, tokenizer, config)
    params = RequestParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    engine.generate([prompts[0][:32]], params.replace(max_tokens=4))  # warm-up (builds the native attention op)
    rates, totals, tokens = [], [], []
    for ids in prompts:
        engine.reset_prefix_cache()
        start = time.perf_counter()
        out = engine.generate([ids], params)[0]
        totals.append(time.perf_counter() - start)
        rates.append(len(out.token_ids) / totals[-1])
        tokens.append(out.token_ids)
    row = {"config": label, "k": k, "decode_tok_s": median(rates), "total_s": sum(totals), "tokens": tokens}
    if k:
        m = engine.metrics()
        row["acceptance"] = m["spec_acceptance_rate"]
        row["tokens_per_step"] = (m["spec_accepted_tokens"] + m["spec_verifications"]) / max(1, m["spec_verifications"])
    progress(f"{label} k={k}: {row['decode_tok_s']:.1f} tok/s")
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--docs", default="assert,del,return", help="pydoc topics to quote, comma-separated")
    ap.add_argument("--k", default="3,5,8", help="tokens proposed per round for prompt lookup, comma-separated")
    ap.add_argument("--draft-blocks", type=int, default=20, help="layer-skip draft size in blocks; 0 = no such row")
    ap.add_argument("--draft", default=None, help="a draft model with the same tokenizer (registry name or path)")
    ap.add_argument("--weights", default="auto", choices=["auto", "float32"])
    ap.add_argument("--quant-act", default="fast", choices=["fast", "exact"], help="activations of quantized layers")
    ap.add_argument("--no-engine", action="store_true", help="skip the serving-engine rows")
    args = ap.parse_args(argv)

    from hybridlm.generation import SamplingConfig
    from hybridlm.generation.proposers import DraftModelProposer, PromptLookupProposer, layer_skip_draft

    torch.set_num_threads(args.threads)
    loaded = load(args.model, args.weights, args.quant_act)
    model = loaded.model
    prompts = prompts_for(loaded.tokenizer, args.docs.split(","))
    sampling = SamplingConfig(temperature=0, max_new_tokens=args.new_tokens, ignore_eos=True)
    ks = [int(k) for k in args.k.split(",")]
    progress("warm-up")
    run_config("warm-up", ks[0], model, [prompts[0][:64]], sampling.replace(max_new_tokens=8), PromptLookupProposer())

    rows = [run_config("plain", None, model, prompts, sampling)]
    rows += [run_config("prompt-lookup", k, model, prompts, sampling, PromptLookupProposer()) for k in ks]
    rows.append(run_config("prompt-lookup batched-attn", ks[len(ks) // 2], model, prompts, sampling,
                           PromptLookupProposer(), verify_attention="batched"))
    if args.draft_blocks:
        draft = DraftModelProposer(layer_skip_draft(model, args.draft_blocks))
        rows.append(run_config(f"layer-skip:{args.draft_blocks}", min(ks), model, prompts, sampling, draft))
    if args.draft:
        rows.append(run_config(f"draft:{args.draft}", min(ks), model, prompts, sampling,
                               DraftModelProposer(load(args.draft, args.weights, args.quant_act).model)))

    if not args.no_engine:
        rows.append(run_engine("engine", None, model, loaded.tokenizer, prompts, args.new_tokens))
        rows.append(run_engine("engine+prompt-lookup", ks[len(ks) // 2], model, loaded.tokenizer, prompts,
                               args.new_tokens))

    bases = {"plain": rows[0], "engine": next((r for r in rows if r["config"] == "engine"), None)}
    for row in rows:
        base = bases["engine" if row["config"].startswith("engine") else "plain"]
        row["speedup"] = row["decode_tok_s"] / base["decode_tok_s"] if base["decode_tok_s"] else None
        row["same_tokens_as"] = base["config"]
    tokens = {row["config"]: row["tokens"] for row in rows}
    for row in rows:
        row["same_tokens"] = sum(a == b for a, b in zip(row.pop("tokens"), tokens[row["same_tokens_as"]]))
    print_table(rows, ["config", "k", "acceptance", "tokens_per_step", "decode_tok_s", "speedup", "same_tokens",
                       "same_tokens_as", "total_s"])
    emit_json({"bench": "speculative", **environment(), "model": args.model, "weights": args.weights,
               "quant_act": args.quant_act,
               "threads": args.threads, "new_tokens": args.new_tokens, "docs": args.docs.split(","),
               "prompt_tokens": [len(p) for p in prompts], "rows": rows})


if __name__ == "__main__":
    main()
