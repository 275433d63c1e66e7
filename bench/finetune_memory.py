"""How much model state does fine-tuning SmolLM2-135M hold: full, LoRA, QLoRA (NF4, int4)?

Model state = the frozen weights as stored (float32, or 4-bit codes + scales for the quantized
linears) + every trainable parameter with its gradient and AdamW's two moments (16 bytes each).
Activations are left out (they depend on batch and length, not on the method). One real optimizer
step is run for each method on one short conversation, so what is counted is what trained.

    python -m bench.finetune_memory [--model smollm2-135m] [--r 16] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch

from bench.common import emit_json, environment, print_table, progress


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from hybridlm.checkpoints.registry import load_model
    from hybridlm.compress import QuantizeConfig, quantize_model
    from hybridlm.finetune.api import QLORA_FORMATS, memory_report
    from hybridlm.finetune.data import collate, encode_record, to_example
    from hybridlm.finetune.lora import LoraConfig, apply_lora
    from hybridlm.finetune.sft import SFTObjective

    lcfg = LoraConfig(r=args.r, alpha=2 * args.r, targets=("q", "k", "v", "o", "gate", "up", "down"))
    rows = []
    for method in ("full", "lora", "qlora-nf4", "qlora-int4"):
        progress(f"finetune_memory: {method}")
        lm = load_model(args.model, dtype=torch.float32)
        if method.startswith("qlora"):
            quantize_model(lm.model, QuantizeConfig(**QLORA_FORMATS[method.split("-")[1]]))
        if method != "full":
            apply_lora(lm.model, lcfg)
        conv = {"messages": [{"role": "user", "content": "What does str.upper do?"},
                             {"role": "assistant", "content": "Return a copy of the string converted to uppercase."}]}
        batch = collate([[to_example(*encode_record(lm.tokenizer, conv, "x"), 128)]], 0, packed=False)
        params = [q for q in lm.model.parameters() if q.requires_grad]
        optim = torch.optim.AdamW(params, lr=1e-5)
        loss = SFTObjective().loss(lm.model.train(), batch)
        loss.backward()
        optim.step()
        counted = sum(s.numel() * s.element_size() for st in optim.state.values() for s in st.values()
                      if torch.is_tensor(s) and s.dim() > 0)
        m = memory_report(lm.model)
        rows.append({"method": method, "trainable_params": m["trainable_params"],
                     "frozen_MiB": m["frozen_weight_bytes"] / 2**20, "trainable_state_MiB": m["trainable_state_bytes"] / 2**20,
                     "total_MiB": m["total_bytes"] / 2**20, "adam_moments_MiB": counted / 2**20, "loss": loss.item()})
    full = rows[0]["total_MiB"]
    for r in rows:
        r["vs_full"] = r["total_MiB"] / full
    print_table(rows, ["method", "trainable_params", "frozen_MiB", "trainable_state_MiB", "total_MiB", "vs_full",
                       "adam_moments_MiB"])
    emit_json({"bench": "finetune_memory", "model": args.model, "r": args.r, "rows": rows, **environment()})


if __name__ == "__main__":
    main()
