"""Batch-1 decode on a GPU with CUDA graphs against the weight-bytes / bandwidth floor and
`transformers` in the same run.

    python -m bench.gpu_decode [--models smollm2,llama-1b] [--new-tokens 128] [--prompt-tokens 128]

Models: SmolLM2-135M (the shipped GGUF, dequantized to bf16) and a Llama-3.2-1B-shaped model with
random weights (decode speed does not depend on the values; no download). hybridlm decodes through
`compile_decoder` with inductor's CUDA graphs (`triton.cudagraphs`): one graph launch per token.
The floor: every weight byte (embedding excluded, LM head included) read once per token at the copy
bandwidth measured in this run; of_floor = floor tok/s reached (the goal: >= 1 / 1.5).
transformers runs the same weights (bf16, `generate` greedy with a static cache, eager).
Without CUDA it prints why and exits 2.
"""

from __future__ import annotations

import argparse
import time

import torch

from .common import emit_json, print_table, progress
from .gpu_common import ceilings, gpu_environment, require_cuda


def _models(name: str):
    """(our model, an equivalent transformers model) on CUDA in bf16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hybridlm.checkpoints.registry import load_model, resolve_gguf
    from hybridlm.presets import get_preset

    if name == "smollm2":
        ours = load_model("smollm2-135m", dtype=torch.bfloat16, device="cuda").model.eval()
        from transformers import AutoModelForCausalLM

        path = resolve_gguf("smollm2-135m")
        theirs = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, torch_dtype=torch.bfloat16)
        return ours, theirs.cuda().eval()
    if name == "llama-1b":
        from hybridlm.models.decoder import Decoder

        cfg = get_preset("smollm2-135m", d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192,
                         vocab_size=128256, max_seq_len=4096, rope_theta=500000.0)
        ours = Decoder(cfg).to("cuda", torch.bfloat16).eval()
        theirs = LlamaForCausalLM(LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                                              num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                                              tie_word_embeddings=cfg.tie_embeddings, rope_theta=500000.0))
        return ours, theirs.to("cuda", torch.bfloat16).eval()
    raise ValueError(f"unknown model {name!r}; choose smollm2 or llama-1b")


def weight_bytes(model) -> int:
    """Bytes a decode step reads: every parameter but the input embedding (one row of it is read)."""
    embed = model.embed.weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed) + (
        embed.numel() * embed.element_size() if model.config.tie_embeddings else 0)


def measure(name: str, prompt_tokens: int, new_tokens: int, copy_gb_s: float) -> dict:
    from hybridlm.generation import SamplingConfig, generate
    from hybridlm.generation.compiled import compile_decoder

    ours, theirs = _models(name)
    prompt = torch.randint(0, 1000, (prompt_tokens,)).tolist()
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    compiled = compile_decoder(ours, options={"triton.cudagraphs": True}, pack_prefill=False)
    progress(f"{name}: compiling the decode step")
    generate(compiled, [prompt], SamplingConfig(max_new_tokens=8, temperature=0, ignore_eos=True), cache_kind="static")
    stats = generate(compiled, [prompt], sampling, cache_kind="static").stats
    ours_tok_s = stats.decode_tokens_per_s
    progress(f"{name}: transformers")
    ids = torch.tensor([prompt], device="cuda")
    theirs.generate(ids, max_new_tokens=8, do_sample=False, cache_implementation="static")
    torch.cuda.synchronize()
    start = time.perf_counter()
    theirs.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                    cache_implementation="static")
    torch.cuda.synchronize()
    theirs_tok_s = new_tokens / (time.perf_counter() - start)
    nbytes = weight_bytes(ours)
    floor = copy_gb_s * 1e9 / nbytes
    return {"model": name, "weight_mb": nbytes / 1e6, "hybridlm_tok_s": ours_tok_s,
            "transformers_tok_s": theirs_tok_s, "vs_transformers": ours_tok_s / theirs_tok_s,
            "floor_tok_s": floor, "of_floor": ours_tok_s / floor}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2,llama-1b", help="comma-separated: smollm2, llama-1b")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args(argv)
    if not require_cuda("bench.gpu_decode"):
        return 2
    peak = ceilings()
    rows = [measure(m, args.prompt_tokens, args.new_tokens, peak["copy_gb_s"]) for m in args.models.split(",")]
    print_table(rows, ["model", "weight_mb", "hybridlm_tok_s", "transformers_tok_s", "vs_transformers",
                       "floor_tok_s", "of_floor"])
    emit_json({"bench": "gpu_decode", "env": gpu_environment(), "ceilings": peak, "config": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
