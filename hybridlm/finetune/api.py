"""`finetune`: one entry point for every method; each builds a model and a `Recipe` and hands both
to the trainer (train/trainer.py), so the optimizer, schedule, checkpoints, exact resume and
torchrun are the trainer's.

    sft      all weights train on conversations / prompt-completion pairs; writes RUN_DIR/model (HF)
    lora     only low-rank adapters train; writes RUN_DIR/adapter (PEFT format)
    qlora    lora over the base quantized to 4 bits (NF4 or int4, compress/); writes RUN_DIR/adapter
    dpo      preference pairs against a frozen reference; LoRA adapters (default) or all weights
    distill  a student learns from a teacher's softened logits over token shards; writes RUN_DIR/model
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..train.config import TrainConfig
from ..train.recipe import Recipe
from .distill import DistillConfig
from .dpo import DPOConfig
from .lora import LoraConfig

METHODS = ("sft", "lora", "qlora", "dpo", "distill")
QLORA_FORMATS = {"nf4": dict(method="nf4", group_size=64), "int4": dict(method="rtn", bits=4, group_size=32)}


@dataclass
class FinetuneConfig:
    method: str  # sft | lora | qlora | dpo | distill
    model: str  # the base (registry name, .gguf, HF directory); for distill the student: one of those or a preset
    data: str  # JSONL (sft, lora, qlora, dpo) or a prepared token-shard directory (distill)
    val_data: str | None = None  # held-out JSONL; default: --val-fraction of --data
    val_fraction: float = 0.05  # share of --data held out for evaluation when --val-data is not given
    packing: bool = False  # pack several examples per sequence (attention and Mamba state kept inside each)
    lora: LoraConfig = field(default_factory=LoraConfig)
    qlora_format: str = "nf4"  # qlora's frozen base: nf4 (QLoRA's NormalFloat, groups of 64) or int4 (groups of 32)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    dpo_full: bool = False  # DPO trains all weights against a frozen copy (default: LoRA, reference = adapters off)
    teacher: str | None = None  # distill: the teacher model (same tokenizer as the data)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.qlora_format not in QLORA_FORMATS:
            raise ValueError(f"--qlora-format must be one of {', '.join(QLORA_FORMATS)}")
        if self.method == "distill" and not self.teacher:
            raise ValueError("distill needs --teacher")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("--val-fraction must be in [0, 1)")

    @property
    def uses_lora(self) -> bool:
        return self.method in ("lora", "qlora") or (self.method == "dpo" and not self.dpo_full)


def _load_base(fcfg: FinetuneConfig, device):
    from ..checkpoints.registry import load_model

    loaded = load_model(fcfg.model, dtype=torch.float32, device=device)
    if fcfg.method == "qlora":
        from ..compress import QuantizeConfig, quantize_model

        quantize_model(loaded.model, QuantizeConfig(**QLORA_FORMATS[fcfg.qlora_format]))
    return loaded


def _jsonl_splits(fcfg: FinetuneConfig, tokenizer, tcfg: TrainConfig, preference: bool):
    """(train, held-out) example sets of the JSONL data."""
    from .data import ExampleSet, encode_record, read_jsonl, split_held_out, to_example
    from .dpo import PreferenceSet, encode_preference

    def encode(records, path):
        if preference:
            return [encode_preference(tokenizer, r, f"{path}:{n}", tcfg.seq_len) for n, r in records]
        return [to_example(*encode_record(tokenizer, r, f"{path}:{n}"), tcfg.seq_len) for n, r in records]

    records = read_jsonl(fcfg.data)
    if fcfg.val_data:
        train_records, val_records, val_path = records, read_jsonl(fcfg.val_data), fcfg.val_data
    else:
        train_records, val_records = split_held_out(records, fcfg.val_fraction, tcfg.seed)
        val_path = fcfg.data
    cls, pad = (PreferenceSet if preference else ExampleSet), tokenizer.pad_token_id or 0
    packed = fcfg.packing and not preference
    make = lambda ex: cls(ex, tcfg.seq_len, pad, packed, tcfg.seed, tokenizer.vocab_size)  # noqa: E731
    return make(encode(train_records, fcfg.data)), make(encode(val_records, val_path)) if val_records else None


def memory_report(model: torch.nn.Module) -> dict:
    """Bytes of model state for training `model` as it is (frozen weights + trainable parameters with
    their gradients and AdamW's two moments) against full fine-tuning of the same model in float32
    (every parameter with gradient and two moments: 16 bytes each). Quantized weights count their
    codes, scales and tables."""
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    frozen += sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    from ..nn.quant import QuantLinear

    n_base = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    n_base += sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantLinear))
    return {"frozen_weight_bytes": frozen, "trainable_params": n_trainable,
            "trainable_state_bytes": 16 * n_trainable, "total_bytes": frozen + 16 * n_trainable,
            "full_finetune_bytes": 16 * (n_base + n_trainable), "base_params": n_base}


def _lora_export(lcfg: LoraConfig, base: str):
    from .peft_format import save_adapter

    def export(model, run_dir: Path) -> str:
        save_adapter(model, lcfg, run_dir / "adapter", base=base, overwrite=True)
        return "PEFT adapter"
    return export


def _model_export(tokenizer):
    from ..train.export import export_hf

    def export(model, run_dir: Path) -> str | None:
        student = getattr(model, "student", model)
        return export_hf(student, run_dir / "model", tokenizer)
    return export


def build(fcfg: FinetuneConfig, tcfg: TrainConfig) -> tuple[torch.nn.Module, Recipe, dict]:
    """The model to train, its Recipe, and facts for the summary (memory, examples, ...)."""
    from ..device import resolve_device

    device = resolve_device(tcfg.device)
    if fcfg.method == "distill":
        return _build_distill(fcfg, tcfg, device)
    from .lora import apply_lora

    loaded = _load_base(fcfg, device)
    model, tokenizer = loaded.model, loaded.tokenizer
    preference = fcfg.method == "dpo"
    train_set, val_set = _jsonl_splits(fcfg, tokenizer, tcfg, preference)
    info = {"train_examples": len(train_set.examples), "val_examples": len(val_set.examples) if val_set else 0,
            "rows": len(train_set)}
    if fcfg.uses_lora:
        torch.manual_seed(tcfg.seed)  # the adapters' A init, repeated exactly by --resume
        apply_lora(model, fcfg.lora)
        export = _lora_export(fcfg.lora, fcfg.model)
    else:
        export = _model_export(tokenizer)
    if preference:
        from .dpo import DPOObjective, frozen_copy

        objective = DPOObjective(fcfg.dpo, None if fcfg.uses_lora else frozen_copy(model))
    else:
        from .sft import SFTObjective

        objective = SFTObjective()
    info["memory"] = memory_report(model)
    return model, Recipe(train_set, val_set, objective, trainable_only=fcfg.uses_lora, export=export), info


def _build_distill(fcfg: FinetuneConfig, tcfg: TrainConfig, device):
    from ..checkpoints.registry import REGISTRY, load_model
    from ..models.decoder import Decoder
    from ..presets import PRESETS, get_preset
    from ..train.export import dataset_tokenizer
    from ..train.objectives import open_splits
    from .distill import DistillObjective, Student, check_same_tokenizer

    train_data, val_data = open_splits(fcfg.data, tcfg.seed, "decoder")
    data_tok = dataset_tokenizer(fcfg.data, train_data.manifest)
    teacher = load_model(fcfg.teacher, dtype=torch.float32, device=device, keep_quantized=device.type == "cpu")
    check_same_tokenizer(teacher.tokenizer, data_tok, fcfg.teacher)
    if fcfg.model in PRESETS and fcfg.model not in REGISTRY:  # a fresh student of this shape
        torch.manual_seed(tcfg.seed)
        student = Decoder(get_preset(fcfg.model, **{"vocab_size": teacher.model.config.vocab_size,
                                                    **tcfg.model_overrides})).to(device)
    else:
        loaded = load_model(fcfg.model, dtype=torch.float32, device=device)
        check_same_tokenizer(loaded.tokenizer, data_tok, fcfg.model)
        student = loaded.model
    if student.config.vocab_size != teacher.model.config.vocab_size:
        raise ValueError(f"student vocab {student.config.vocab_size} != teacher vocab {teacher.model.config.vocab_size}")
    torch.manual_seed(tcfg.seed + 1)
    width = teacher.model.config.d_model if fcfg.distill.hidden_weight > 0 else None
    model = Student(student, width).to(device)
    objective = DistillObjective(teacher.model, fcfg.distill)
    info = {"student_params": sum(p.numel() for p in student.parameters())}
    return model, Recipe(train_data, val_data, objective, export=_model_export(data_tok)), info


def finetune(fcfg: FinetuneConfig, tcfg: TrainConfig) -> tuple[object, dict]:
    """Build and train; (TrainResult, info). Writes RUN_DIR/finetune_config.json beside the trainer's files."""
    from ..train import train
    from ..train.checkpoint import latest_checkpoint

    out = Path(tcfg.out_dir)
    if latest_checkpoint(out) is not None and not tcfg.resume:  # before any model is loaded
        raise FileExistsError(f"{out} already holds checkpoints; pass --resume to continue it, or choose a new --out")
    model, recipe, info = build(fcfg, tcfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune_config.json").write_text(json.dumps(asdict(fcfg), indent=2, sort_keys=True, default=str) + "\n")
    if "memory" in info:
        m = info["memory"]
        print(f"finetune: {m['trainable_params']:,} trainable parameters; model state {m['total_bytes'] / 2**20:.1f} MiB "
              f"(full fine-tuning: {m['full_finetune_bytes'] / 2**20:.1f} MiB)", file=sys.stderr)
    return train(tcfg, model=model, recipe=recipe), info
