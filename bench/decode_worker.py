"""One engine of bench/decode.py, kept loaded in its own process between timed runs.

    python bench/decode_worker.py --engine hybridlm|transformers|llama.cpp --model FILE --prompt-file IDS.json
                                  --new-tokens 128 --threads 2 [engine options]

Why a process per engine: the decode bench alternates engines run by run, so machine noise hits
them alike, and every engine must keep its model (and compiled graph) loaded meanwhile; in one
process their thread pools (torch's OpenMP, llama.cpp's own OpenMP runtime) would spin against
each other. The llama.cpp engine runs under whichever Python has llama-cpp-python (its own
environment, usually), so this file imports neither torch nor hybridlm at module level.

Protocol, one JSON object per line on stdout: after loading and a warm-up, {"ready": true, ...}
(load and compile seconds, bytes of matrix weights a decode step reads); then for each line "run"
on stdin, {"prefill_s", "decode_s", "tokens"}: time to the first new token after the prompt, time
of the remaining new tokens (greedy, past EOS), and the token ids. "quit" or end of input exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


class HybridLM:
    def __init__(self, args):
        import torch

        from hybridlm.checkpoints.registry import load_model
        from hybridlm.generation.compiled import compile_decoder
        from hybridlm.generation.sampling import SamplingConfig
        from hybridlm.nn.packed_linear import pack_linears
        from hybridlm.nn.quant import QuantLinear, set_quant_modes

        torch.set_num_threads(args.threads)
        start = time.perf_counter()
        loaded = load_model(args.model, dtype=torch.float32, keep_quantized=args.keep_quantized)
        model = loaded.model.eval()
        set_quant_modes(model, act_mode=args.quant_act)
        self.weight_bytes = sum(m.weight_q.nbytes() if isinstance(m, QuantLinear) else m.weight.numel() * 4
                                for m in model.modules() if isinstance(m, (QuantLinear, torch.nn.Linear)))
        self.model = compile_decoder(model) if args.compile else model
        if not args.compile:
            self.linear = pack_linears(model, args.linear)
        if args.native_step:
            from hybridlm.generation.native import NativeDecoder

            self.model = NativeDecoder(model)
        self.load_s = time.perf_counter() - start
        self.sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0, ignore_eos=True)
        self.kv_cache = args.kv_cache
        start = time.perf_counter()
        self._generate(args.prompt[:32], 8)  # warm-up (and, compiled, the compile)
        self.compile_s = time.perf_counter() - start if args.compile else None

    def _generate(self, ids, n):
        from hybridlm.generation.generate import generate

        return generate(self.model, [ids], self.sampling.replace(max_new_tokens=n), cache_kind="static",
                        kv_dtype=self.kv_cache)

    def run(self, prompt, new_tokens):
        res = self._generate(prompt, new_tokens)
        decode_s = (new_tokens - 1) / res.stats.decode_tokens_per_s
        return {"prefill_s": res.stats.prefill_s, "decode_s": decode_s, "tokens": res.tokens[0]}


class Transformers:
    def __init__(self, args):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pathlib import Path

        torch.set_num_threads(args.threads)
        path = Path(args.model)
        start = time.perf_counter()
        AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)  # part of what a user loads
        self.model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                          dtype=torch.float32).eval()
        self.load_s, self.compile_s = time.perf_counter() - start, None
        self.weight_bytes = sum(m.weight.numel() * 4 for m in self.model.modules() if isinstance(m, torch.nn.Linear))
        self.run(args.prompt[:32], 4)

    def run(self, prompt, new_tokens):
        import torch

        ids = torch.tensor([prompt])
        kwargs = dict(do_sample=False, eos_token_id=None, pad_token_id=0, attention_mask=torch.ones_like(ids))
        with torch.inference_mode():
            start = time.perf_counter()
            self.model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
            first = time.perf_counter() - start
            start = time.perf_counter()
            out = self.model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
            total = time.perf_counter() - start
        return {"prefill_s": first, "decode_s": max(total - first, 1e-9), "tokens": out[0, len(prompt):].tolist()}


class LlamaCpp:
    """llama-cpp-python 0.3.x: without logits_all, `llm.scores` holds no logits (and with it only
    n_batch rows), so the last token's logits are read from the context itself."""

    def __init__(self, args):
        import llama_cpp
        import numpy as np

        self.np, self.llama_cpp = np, llama_cpp
        start = time.perf_counter()
        n_ctx = len(args.prompt) + args.new_tokens + 8
        self.llm = llama_cpp.Llama(model_path=args.model, n_ctx=n_ctx, n_batch=len(args.prompt),
                                   n_ubatch=len(args.prompt), n_threads=args.threads, n_threads_batch=args.threads,
                                   verbose=False)
        self.load_s, self.compile_s = time.perf_counter() - start, None
        self.n_vocab = self.llm.n_vocab()
        self.weight_bytes = None  # the same file's linears: bench/decode.py counts them with hybridlm's reader
        self.run(args.prompt[:32], 4)

    def _next(self) -> int:
        logits = self.llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return int(self.np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())

    def run(self, prompt, new_tokens):
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(prompt)
        tokens = [self._next()]
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            self.llm.eval(tokens[-1:])
            tokens.append(self._next())
        return {"prefill_s": first, "decode_s": time.perf_counter() - start, "tokens": tokens}


ENGINES = {"hybridlm": HybridLM, "transformers": Transformers, "llama.cpp": LlamaCpp}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", required=True, choices=sorted(ENGINES))
    ap.add_argument("--model", required=True, help="a GGUF file (or, for hybridlm, any model it loads)")
    ap.add_argument("--prompt-file", required=True, help="JSON list of prompt token ids")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep-quantized", action="store_true", help="hybridlm: run the GGUF's blocks natively")
    ap.add_argument("--quant-act", default="fast", choices=["fast", "exact"])
    ap.add_argument("--compile", action="store_true", help="hybridlm: compiled decode step")
    ap.add_argument("--native-step", action="store_true", help="hybridlm: one native call per decode token")
    ap.add_argument("--kv-cache", default="float", choices=["float", "float16"], help="hybridlm: K/V storage")
    ap.add_argument("--linear", default="auto", help="hybridlm: float linears (auto, packed, ref)")
    args = ap.parse_args(argv)
    with open(args.prompt_file) as f:
        args.prompt = json.load(f)
    engine = ENGINES[args.engine](args)
    ready = {"ready": True, "load_s": engine.load_s, "compile_s": engine.compile_s,
             "weight_bytes": engine.weight_bytes}
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(json.dumps(engine.run(args.prompt, args.new_tokens)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
