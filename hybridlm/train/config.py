"""`TrainConfig`: everything a pre-training run needs besides the model shape and the data."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PP_SCHEDULES = ("1f1b", "gpipe")  # parallel/pipeline.py SCHEDULES
CP_ATTENTIONS = ("ring", "allgather")  # parallel/context.py ATTENTIONS


class TrainConfigError(ValueError):
    """Training settings that cannot describe a working run."""


@dataclass
class TrainConfig:
    # what to train, on what, where
    preset: str  # model shape: a name in hybridlm.presets.PRESETS
    data_dir: str  # a prepared dataset (hybridlm.data.shards format) with train and val splits, or for seq2seq presets a synthetic task made on the fly: task:reverse or task:sort, optionally :MIN-MAX digits
    out_dir: str  # run directory: log.jsonl, loss.png, checkpoints/, model/ (HF export)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields replacing the preset's
    vocab_from_data: bool = True  # set the model's vocab_size to the dataset's (a preset is a shape)

    # length and batch
    max_steps: int = 1000  # optimizer steps; the LR schedule ends here
    seq_len: int = 256  # tokens per training sequence (targets are the next tokens)
    micro_batch_size: int = 8  # sequences per forward/backward on each rank
    global_batch_size: int | None = None  # sequences per optimizer step over all ranks; None = micro x ranks
    global_batch_tokens: int | None = None  # the global batch in tokens (a multiple of seq_len), instead of sequences

    # optimizer and schedule
    lr: float = 3e-4  # peak learning rate, reached at the end of warm-up
    min_lr_ratio: float = 0.1  # the cosine decays to lr x this at max_steps
    warmup_steps: int = 100  # linear warm-up from 0 over this many steps
    weight_decay: float = 0.1  # AdamW decoupled decay on matrices only (not norms, biases, embeddings)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW denominator epsilon
    grad_clip: float = 1.0  # max global L2 norm of the gradient; 0 = no clipping

    # numerics and memory
    precision: str = "auto"  # auto (bf16 on CUDA or native-bf16 CPUs, else fp32) | fp32 | bf16 | fp16 (CUDA)
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    dropout: float | None = None  # replaces the model's dropout when set
    label_smoothing: float = 0.0  # cross-entropy label smoothing for the training loss (not validation)
    qat: str | None = None  # quantization-aware training: linears fake-quantized as int<b>[-g<N>|-channel][-asym][-a8], e.g. int4-g32; the end also writes RUN_DIR/quantized

    # evaluation, logging, checkpoints
    eval_every: int = 100  # validate every this many steps (and at the end); 0 = only at the end
    eval_sequences: int = 64  # validation sequences (of seq_len) per evaluation, split over ranks
    save_every: int = 500  # checkpoint every this many steps (and at the end); 0 = only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept on disk; older ones are deleted
    export_hf: bool = True  # at the end, write RUN_DIR/model as an HF checkpoint when the arch allows
    plot: bool = True  # write RUN_DIR/loss.png at each checkpoint and at the end
    progress: bool = True  # tqdm progress bar on stderr (rank 0)
    peak_flops: float | None = None  # FLOP/s of one device for MFU; None = measured with a matmul

    # where and how to stop
    seed: int = 0  # model init, data order and dropout all derive from it
    resume: bool = False  # continue from the newest checkpoint in out_dir/checkpoints (none: start fresh)
    stop_at_step: int | None = None  # end this invocation after this step (checkpointed), as a pre-empted job
    max_time_s: float | None = None  # end this invocation after this many seconds of training (checkpointed)
    device: str = "auto"  # cpu, cuda, cuda:N or auto; under torchrun CUDA ranks use cuda:LOCAL_RANK
    threads: int | None = None  # torch CPU threads (default: torch's choice)
    fsdp: bool = False  # shard parameters, gradients and optimizer state with FSDP2 (else DDP)
    tp: int = 1  # tensor-parallel ranks per model copy (heads and channels split, parallel/tensor.py); FSDP2 over the remaining world_size / tp ranks (--fsdp: resharded after forward, ZeRO-3; else kept, ZeRO-2)
    pp: int = 1  # pipeline stages (contiguous runs of blocks, parallel/pipeline.py; decoder models with untied embeddings, no dropout, no MoE load-balancing loss); the global batch per replica is cut into micro-batches of --micro-batch-size; the rest of the world is data parallel with DDP's all-reduce (not with --tp, --cp, --ep or --fsdp)
    pp_schedule: str = "1f1b"  # pipeline schedule with --pp: 1f1b or gpipe (torch.distributed.pipelining)
    ep: int = 1  # expert-parallel ranks (MoE models, parallel/expert.py): the whole world (ep = data-parallel size); each rank holds n_experts / ep experts and its own tokens, which travel by all-to-all (not with --tp, --pp or --fsdp; needs moe_capacity_factor=0)
    cp: int = 1  # context-parallel ranks: each holds seq_len / cp tokens of every sequence (parallel/context.py; decoders without Mamba blocks, ALiBi or sliding windows); DDP or --fsdp over the data-parallel x context-parallel ranks; combines with --tp (not with --pp or --ep)
    cp_attention: str = "ring"  # attention across the --cp ranks: ring (K/V blocks passed rank to rank, online softmax) or allgather (every rank gathers the whole K/V: the simple reference)

    def __post_init__(self) -> None:
        checks = [
            (self.max_steps > 0, "max_steps must be positive"),
            (self.seq_len > 0 and self.micro_batch_size > 0, "seq_len and micro_batch_size must be positive"),
            (self.global_batch_size is None or self.global_batch_tokens is None,
             "give global_batch_size (sequences) or global_batch_tokens, not both"),
            (self.global_batch_tokens is None or self.global_batch_tokens % self.seq_len == 0,
             f"global_batch_tokens must be a multiple of seq_len {self.seq_len}"),
            (self.lr > 0 and 0.0 <= self.min_lr_ratio <= 1.0, "lr must be positive and min_lr_ratio in [0, 1]"),
            (self.warmup_steps >= 0 and self.weight_decay >= 0 and self.grad_clip >= 0,
             "warmup_steps, weight_decay and grad_clip must be non-negative"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.dropout is None or 0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)"),
            (self.eval_every >= 0 and self.save_every >= 0, "eval_every and save_every must be non-negative"),
            (self.eval_sequences >= 0, "eval_sequences must be non-negative"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1"),
            (self.peak_flops is None or self.peak_flops > 0, "peak_flops must be positive"),
            (min(self.tp, self.pp, self.ep, self.cp) >= 1, "tp, pp, ep and cp must be at least 1"),
            (self.pp_schedule in PP_SCHEDULES, f"pp_schedule must be one of {PP_SCHEDULES}"),
            (self.cp_attention in CP_ATTENTIONS, f"cp_attention must be one of {CP_ATTENTIONS}"),
            (self.pp == 1 or (self.tp, self.cp, self.ep) == (1, 1, 1),
             "--pp combines with data parallelism only (not with --tp, --cp or --ep)"),
            (self.pp == 1 or not self.fsdp, "--pp runs DDP-style replicas over the other ranks, not --fsdp"),
            (self.pp == 1 or self.label_smoothing == 0, "--pp trains with plain cross-entropy (no --label-smoothing)"),
            (self.ep == 1 or (self.tp, self.cp) == (1, 1), "--ep combines with data parallelism only (not with --tp or --cp)"),
            (self.ep == 1 or not self.fsdp, "--ep reduces gradients by hand (replicated and expert parameters over "
                                            "different ranks), not with --fsdp"),
            (self.qat is None or (self.pp, self.ep, self.cp) == (1, 1, 1), "--qat runs on data parallelism only"),
            (self.qat is None or self.tp == 1, "--qat and --tp do not combine (tensor parallelism splits nn.Linear "
                                               "weights; QAT replaces them with fake-quantized modules)"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainConfigError(message)
        if self.qat is not None:
            from ..compress.qat import QATSpec  # the spec's grammar lives with the fake-quant modules

            try:
                QATSpec.parse(self.qat)
            except ValueError as e:
                raise TrainConfigError(str(e)) from None

    def global_batch(self, world_size: int) -> int:
        """Sequences per optimizer step over all ranks."""
        if self.global_batch_tokens is not None:
            return self.global_batch_tokens // self.seq_len
        return self.global_batch_size or self.micro_batch_size * world_size

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches each rank runs per optimizer step; the global batch must split evenly."""
        per_step = self.micro_batch_size * world_size
        total = self.global_batch(world_size)
        if total % per_step:
            raise TrainConfigError(f"global batch of {total} sequences is not a multiple of micro_batch_size "
                                   f"{self.micro_batch_size} x {world_size} ranks")
        return total // per_step

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainConfigError(f"unknown TrainConfig fields {unknown}")
        return cls(**data)
