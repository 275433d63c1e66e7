"""`finetune sft|lora|qlora|dpo|distill`: post-training on top of the trainer.

Every subcommand takes the trainer's options (`hybridlm train --help`: steps, batch, learning rate
and schedule, evaluation, checkpoints, --resume, precision, threads), with defaults suited to
fine-tuning, plus its method's own."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .train import _add_config_options

# fine-tuning defaults of trainer fields (pre-training's are for runs from scratch)
_DEFAULTS = dict(max_steps=100, seq_len=512, micro_batch_size=4, warmup_steps=10, weight_decay=0.0, eval_every=50,
                 save_every=50, eval_sequences=256, min_lr_ratio=0.1)
_LR = {"sft": 2e-5, "lora": 2e-4, "qlora": 2e-4, "dpo": 5e-5, "distill": 1e-3}  # dpo: for its default LoRA
_SKIP = ("preset", "data_dir", "out_dir", "vocab_from_data", "qat", "export_hf", "label_smoothing")

_HELP = {
    "sft": ("supervised fine-tuning of all weights on conversations (loss on assistant turns only)",
            "Fine-tune every weight of MODEL on JSONL conversations ({\"messages\": [...]}, the model's chat "
            "template applied, loss on assistant tokens only) or prompt/completion pairs (loss on the completion). "
            "Writes RUN_DIR/model (HF checkpoint with the tokenizer) and the trainer's log and checkpoints."),
    "lora": ("LoRA: train low-rank adapters, base frozen; writes a PEFT adapter",
             "Train LoRA adapters (h = W x + alpha/r B A x, W frozen) on the same data as sft. Writes "
             "RUN_DIR/adapter in PEFT's format (adapter_config.json + adapter_model.safetensors), which `peft` "
             "loads onto the transformers model and `hybridlm generate/chat --adapter` loads here."),
    "qlora": ("QLoRA: LoRA over a 4-bit (NF4 or int4) frozen base",
              "As lora, with the frozen base quantized to 4 bits first (NF4 in groups of 64 as in the QLoRA paper, "
              "or int4); gradients flow through the dequantized weights. Prints the model-state memory against "
              "full fine-tuning."),
    "dpo": ("DPO preference tuning (also IPO and robust/cDPO) against a frozen reference",
            "Direct preference optimisation on JSONL pairs ({\"prompt\", \"chosen\", \"rejected\"} as strings or "
            "message lists). By default LoRA adapters train and the reference is the same weights with adapters "
            "off (one copy in memory); --dpo-full trains every weight against a frozen copy. Logs reward margins "
            "and accuracies."),
    "distill": ("knowledge distillation from a teacher into a student (may be a hybrid)",
                "Train MODEL (a preset name for a fresh student, or a checkpoint) on prepared token shards "
                "(`hybridlm data prepare --tokenizer TEACHER`) with (1 - alpha) cross-entropy + alpha T^2 "
                "KL(teacher || student) at temperature T, optionally matching hidden states through a learned "
                "projection. Teacher and student must share the tokenizer. Writes RUN_DIR/model."),
}


def cmd_finetune(args) -> int:
    from ..finetune.api import FinetuneConfig, finetune
    from ..finetune.distill import DistillConfig
    from ..finetune.dpo import DPOConfig
    from ..finetune.lora import LoraConfig
    from ..train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["model_overrides"] = dict(values["model_overrides"])
    tcfg = TrainConfig(preset=args.model, data_dir=args.data, out_dir=args.out, **values)
    opt = vars(args).get  # each method has only its own options; the others keep the dataclasses' defaults
    lora, dpo, distill = LoraConfig(), DPOConfig(), DistillConfig()
    fcfg = FinetuneConfig(
        method=args.method, model=args.model, data=args.data, val_data=opt("val_data"),
        val_fraction=opt("val_fraction", 0.05), packing=opt("packing", False), qlora_format=opt("qlora_format", "nf4"),
        dpo_full=opt("dpo_full", False), teacher=opt("teacher"),
        lora=LoraConfig(r=opt("lora_r", lora.r), alpha=opt("lora_alpha", lora.alpha),
                        dropout=opt("lora_dropout", lora.dropout), targets=tuple(opt("target") or lora.targets),
                        rslora=opt("rslora", False)),
        dpo=DPOConfig(beta=opt("beta", dpo.beta), loss_type=opt("dpo_loss", dpo.loss_type),
                      label_smoothing=opt("dpo_label_smoothing", dpo.label_smoothing)),
        distill=DistillConfig(temperature=opt("temperature", distill.temperature), alpha=opt("alpha", distill.alpha),
                              hidden_weight=opt("hidden_weight", distill.hidden_weight)))
    result, info = finetune(fcfg, tcfg)
    summary = {"run_dir": str(result.run_dir), "method": args.method, "step": result.step,
               "train_loss": result.train_loss, "val_loss": result.val_loss, "tokens_per_s": result.tokens_per_s,
               "elapsed_s": result.elapsed_s, "finished": result.finished, "exported": result.exported, **info}
    if args.json:
        print(json.dumps(summary))
    val = "-" if result.val_loss is None else f"{result.val_loss:.4f}"
    where = {"PEFT adapter": result.run_dir / "adapter"}.get(result.exported, result.run_dir / "model")
    done = f"; {result.exported} in {where}" if result.exported else ""
    print(f"{args.method} step {result.step}: train loss {result.train_loss:.4f}, val loss {val}; "
          f"log in {result.run_dir / 'log.jsonl'}{done}", file=sys.stderr)
    return 0


def _add_method_options(p: argparse.ArgumentParser, method: str) -> None:
    g = p.add_argument_group(f"{method} options")
    if method != "distill":
        g.add_argument("--val-data", default=None, help="held-out JSONL (default: --val-fraction of --data)")
        g.add_argument("--val-fraction", type=float, default=0.05, help="share of --data held out (default 0.05)")
    if method in ("sft", "lora", "qlora"):
        g.add_argument("--packing", action="store_true",
                       help="pack several examples per sequence (block-diagonal attention, positions and Mamba "
                            "state restart per example)")
    if method in ("lora", "qlora", "dpo"):
        g.add_argument("--lora-r", type=int, default=8, help="adapter rank r (default 8)")
        g.add_argument("--lora-alpha", type=float, default=16.0, help="scaling numerator: alpha / r (default 16)")
        g.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapters' input (default 0)")
        g.add_argument("--target", action="append", default=None,
                       choices=["q", "k", "v", "o", "gate", "up", "down", "in_proj", "out_proj"],
                       help="a layer role to adapt (repeatable; default q k v o): attention q k v o, MLP gate up "
                            "down, Mamba in_proj out_proj")
        g.add_argument("--rslora", action="store_true", help="rank-stabilised scaling alpha / sqrt(r)")
    if method == "qlora":
        g.add_argument("--qlora-format", default="nf4", choices=["nf4", "int4"],
                       help="4-bit format of the frozen base (default nf4, groups of 64; int4: groups of 32)")
    if method == "dpo":
        g.add_argument("--beta", type=float, default=0.1, help="KL strength toward the reference (default 0.1)")
        g.add_argument("--dpo-loss", default="sigmoid", choices=["sigmoid", "robust", "ipo"],
                       help="sigmoid = DPO (cDPO with label smoothing), robust, ipo (default sigmoid)")
        g.add_argument("--dpo-label-smoothing", type=float, default=0.0,
                       help="assumed share of flipped preference labels, in [0, 0.5) (default 0)")
        g.add_argument("--dpo-full", action="store_true",
                       help="train all weights against a frozen copy (default: LoRA, reference = adapters off)")
    if method == "distill":
        g.add_argument("--teacher", required=True, help="teacher model (registry name, .gguf, HF directory)")
        g.add_argument("--temperature", type=float, default=2.0, help="softening temperature T (default 2)")
        g.add_argument("--alpha", type=float, default=0.5,
                       help="weight of the soft KL term; 1 - alpha weighs cross-entropy (default 0.5)")
        g.add_argument("--hidden-weight", type=float, default=0.0,
                       help="weight of final-hidden-state MSE through a learned projection (default 0: off)")


def register(sub) -> None:
    """Add `finetune` and its subcommands to the `hybridlm` parser."""
    p = sub.add_parser("finetune", help="post-training: sft, lora, qlora, dpo, distill (on top of the trainer)",
                       description=__doc__)
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    for method, (short, long) in _HELP.items():
        m = methods.add_parser(method, help=short, description=long)
        m.add_argument("model", help="base model: registry name, .gguf or HF directory" +
                       ("; for distill also a preset name (a fresh student)" if method == "distill" else ""))
        m.add_argument("--data", required=True,
                       help="token-shard directory from `hybridlm data prepare`" if method == "distill" else
                       "JSONL file (see the description for its format)")
        m.add_argument("--out", required=True, help="run directory (log, checkpoints, result)")
        _add_method_options(m, method)
        _add_config_options(m.add_argument_group("trainer (see `hybridlm train --help`)"), skip=_SKIP,
                            defaults={**_DEFAULTS, "lr": _LR[method]})
        m.set_defaults(func=cmd_finetune)
        m.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
