"""Pre-training any model hybridlm builds: `train(TrainConfig)` is the whole loop.

One optimizer step: every rank runs `accumulation_steps` micro-batches of its slice of the global
batch (gradients synchronised on the last only), then clip, AdamW, schedule. Exact resume rests on
three things: the data order is a function of (seed, samples seen) (see data.py), torch's RNG is
reseeded from (seed, step, rank) at the start of every step (dropout, anything stochastic), and the
optimizer state is saved whole. So a checkpoint needs no RNG snapshot, and a run stopped at step k
and resumed repeats the uninterrupted run's losses bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

from ..checkpoints.errors import CheckpointError
from ..config import ModelConfig
from ..device import cpu_has_native_bf16
from ..models import build_model
from ..models.decoder import Decoder
from ..presets import get_preset
from . import checkpoint as ckpt
from . import distributed
from .config import TrainConfig, TrainConfigError
from .data import TrainBatches, validation_batches
from .export import dataset_tokenizer, export_hf
from .loss import mean_fields, moe_log_fields, new_moe_stats
from .objectives import family_overrides, objective_for, open_splits, tied_pairs
from .metrics import RunLog, measure_peak_flops, plot_losses, training_flops_per_token
from .optim import build_optimizer, lr_at, set_lr
from .recipe import Recipe


@dataclass
class TrainResult:
    run_dir: Path  # where the log, plot, checkpoints and export are
    step: int  # optimizer steps done (all invocations)
    tokens: int  # training tokens consumed (all invocations)
    train_loss: float  # mean training loss of the last step
    val_loss: float | None  # last validation loss (None without a validation split)
    tokens_per_s: float  # training tokens / step seconds of this invocation, first step excluded when possible
    mfu: float  # tokens_per_s x FLOPs per token / (peak FLOP/s x ranks)
    params: int  # model parameters (tied matrices once)
    elapsed_s: float  # wall time of this invocation's steps
    finished: bool  # the run reached max_steps
    exported: str | None  # HF architecture of RUN_DIR/model, None when not exported


def build_model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    """The preset with the run's overrides; vocab from the data unless told otherwise."""
    overrides = dict(cfg.model_overrides)
    if cfg.vocab_from_data:
        overrides.setdefault("vocab_size", vocab_size)
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    overrides.update(family_overrides(get_preset(cfg.preset).family, overrides, vocab_size))  # MLM's [MASK]
    model_cfg = get_preset(cfg.preset, **overrides)
    if model_cfg.vocab_size < vocab_size:
        raise TrainConfigError(f"the dataset's vocabulary ({vocab_size}) is larger than the model's "
                               f"({model_cfg.vocab_size}); drop --no-vocab-from-data")
    if model_cfg.max_seq_len < cfg.seq_len:
        raise TrainConfigError(f"seq_len {cfg.seq_len} exceeds the model's max_seq_len {model_cfg.max_seq_len}")
    return model_cfg


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype (float32 = no autocast). auto: bf16 on CUDA with bf16 and on CPUs with
    native bf16, else float32 (emulated bf16 matmuls are several times slower on such CPUs)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if name == "fp16" and device.type != "cuda":
        raise TrainConfigError("fp16 training needs CUDA (loss scaling); use bf16 or fp32 on the CPU")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def checkpoint_activations(model: Decoder) -> None:
    """Recompute each block's activations in backward instead of storing them (torch.utils.checkpoint,
    non-reentrant: keeps the RNG state so dropout masks repeat). The blocks' forward is replaced on
    the instances, so parameter names and checkpoints are unchanged. Mutates the model."""
    for block in model.blocks:
        block.forward = functools.partial(_recomputed, block.forward)


def _recomputed(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def step_seed(seed: int, step: int, rank: int) -> int:
    return ((seed * 1_000_003 + step) * 65_537 + rank) % (2**63)


class Trainer:
    """State of one invocation of a run (see `train`)."""

    def __init__(self, cfg: TrainConfig, ctx: distributed.DistContext, model: Decoder | None = None,
                 recipe: Recipe | None = None):
        self.cfg, self.ctx, self.recipe = cfg, ctx, recipe
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.run_dir = Path(cfg.out_dir)
        family = get_preset(cfg.preset).family if model is None else model.config.family
        if recipe is None:
            self.train_data, self.val_data = open_splits(cfg.data_dir, cfg.seed, family)  # token shards or a `task:` spec
        else:
            self.train_data, self.val_data = recipe.train_data, recipe.val_data
        if hasattr(self.train_data, "objective") and (model is None or cfg.export_hf):
            raise TrainConfigError(f"{cfg.data_dir} trains a model the presets do not build (a CLIP-style dual "
                                   "encoder): pass it as train(cfg, model=...) with export_hf=False")
        self.model_cfg = build_model_config(cfg, self.train_data.vocab_size) if model is None else model.config
        if model is not None and (model.config.vocab_size < self.train_data.vocab_size
                                  or model.config.max_seq_len < cfg.seq_len):
            raise TrainConfigError(f"the given model (vocab {model.config.vocab_size}, context "
                                   f"{model.config.max_seq_len}) cannot read this data at seq_len {cfg.seq_len}")
        self.world = ctx.dp_size  # data-parallel replicas: the ranks of a TP group share their batches
        self.global_batch = cfg.global_batch(self.world)
        self.accum = cfg.accumulation_steps(self.world)
        # a fine-tuning recipe's objective, or the data's own (image-text pairs: contrastive), else the family's
        self.objective = recipe.objective if recipe else (
            getattr(self.train_data, "objective", None) or objective_for(self.model_cfg, self.train_data.vocab_size))
        self.batches = self.train_data if hasattr(self.train_data, "micro_batch") else \
            TrainBatches(self.train_data, cfg.seq_len, cfg.seed)
        self.autocast_dtype = resolve_precision(cfg.precision, ctx.device)
        self.step, self.samples_seen, self.prior_elapsed = 0, 0, 0.0
        resume_from = self._prepare_run_dir()

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        base = (build_model(self.model_cfg) if model is None else model).to(ctx.device)
        if cfg.qat:  # the linears compute with fake-quantized weights; parameters and state dict unchanged
            from ..compress.qat import QATSpec, prepare_qat

            prepare_qat(base, QATSpec.parse(cfg.qat))
        self.params = sum(p.numel() for p in base.parameters())
        self.flops_per_token = training_flops_per_token(self.model_cfg, cfg.seq_len)
        if cfg.activation_checkpointing:
            checkpoint_activations(base)
        self.model = distributed.wrap(base, ctx, find_unused="moe" in self.model_cfg.blocks)
        self.pipeline = None  # --pp: this rank's stage runs under torch's schedule
        if ctx.layout.pp > 1:
            from .model_parallel import PipelineRunner

            self.pipeline = PipelineRunner(self.model, ctx.mesh["pp"], self.accum, cfg.pp_schedule)
        if ctx.layout.cp > 1:  # each rank computes its chunk of every sequence
            from ..parallel.context import ContextParallelCache
            from .objectives import ContextParallelLM

            self.objective = ContextParallelLM(ContextParallelCache(distributed.unwrap(self.model), ctx.mesh["cp"],
                                                                    cfg.seq_len, cfg.cp_attention))
        self.optimizer = build_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None
        if resume_from is not None:
            self._load(resume_from)
        self.log = RunLog(self.run_dir / "log.jsonl", ctx.is_main)
        if ctx.is_main:
            self.log.truncate_after(self.step)
        self.peak_flops = cfg.peak_flops or measure_peak_flops(ctx.device, self.autocast_dtype)

    @property
    def _trainable_only(self) -> bool:
        return self.recipe is not None and self.recipe.trainable_only

    def _trainable_names(self) -> set[str]:
        return {n for n, p in distributed.unwrap(self.model).named_parameters() if p.requires_grad}

    # -- run directory and resume --------------------------------------------------------------
    def _prepare_run_dir(self) -> Path | None:
        """Clean leftovers, refuse to overwrite a run unless resuming; the checkpoint to resume from."""
        latest = ckpt.latest_checkpoint(self.run_dir)
        if latest is not None and not self.cfg.resume:
            raise FileExistsError(f"{self.run_dir} already holds checkpoints (newest {latest.name}); pass "
                                  "--resume to continue it, or choose a new --out")
        self.ctx.barrier()  # every rank has looked before rank 0 touches anything
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_partial(self.run_dir)
            if latest is None:
                (self.run_dir / "log.jsonl").unlink(missing_ok=True)
            (self.run_dir / "train_config.json").write_text(self.cfg.to_json() + "\n")
        self.ctx.barrier()
        return latest

    def _load(self, path: Path) -> None:
        model_sd, optim_sd, saved_cfg, state = ckpt.load_checkpoint(path)
        if saved_cfg != self.model_cfg:
            diff = {k: (v, getattr(self.model_cfg, k)) for k, v in saved_cfg.to_dict().items()
                    if getattr(self.model_cfg, k) != v}
            raise CheckpointError(f"{path}: the checkpoint's model differs from this run's (saved, now): {diff}")
        if self._trainable_only and set(model_sd) != self._trainable_names():
            raise CheckpointError(f"{path}: the checkpoint's trainable tensors differ from this run's (other LoRA "
                                  "targets or rank?); resume with the settings it was started with")
        distributed.load_full_state(self.model, self.optimizer, model_sd, optim_sd, self.ctx,
                                    strict=not self._trainable_only)
        self.step, self.samples_seen = int(state["step"]), int(state["samples_seen"])
        self.prior_elapsed = float(state.get("elapsed_s", 0.0))
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])

    # -- one optimizer step --------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype)

    def train_step(self) -> dict:
        """One optimizer step; returns its log entry (every rank, values averaged over ranks)."""
        cfg, ctx = self.cfg, self.ctx
        start = time.perf_counter()
        lr = lr_at(self.step, cfg)
        set_lr(self.optimizer, lr)
        torch.manual_seed(step_seed(cfg.seed, self.step, ctx.dp_rank))  # a TP group drops out alike
        loss_sum, extra_fields = 0.0, []
        if self.pipeline is not None:  # the schedule runs the accum micro-batches itself
            share = self.global_batch // self.world
            batch = self.batches.batch(self.samples_seen + ctx.dp_rank * share, share).to(ctx.device)
            with self._autocast():
                loss_sum = self.pipeline.train(batch) * self.accum
        for micro in range(0 if self.pipeline is not None else self.accum):
            batch = self.batches.micro_batch(self.samples_seen, self.global_batch, ctx.dp_rank, self.world, micro,
                                             cfg.micro_batch_size).to(ctx.device, non_blocking=True)
            stats = new_moe_stats(self.model_cfg)
            with distributed.gradient_sync(self.model, micro == self.accum - 1):
                with self._autocast():
                    kwargs = {} if stats is None else {"moe_stats": stats}
                    loss = self.objective.loss(self.model, batch, cfg.label_smoothing, **kwargs)
                    total = loss
                    if stats is not None:  # read before backward: recomputed blocks record again
                        total = loss + self.model_cfg.moe_aux_loss_coef * stats.aux_loss.to(loss.device)
                        extra_fields.append(moe_log_fields(stats))
                    if getattr(self.objective, "last_fields", None):  # e.g. DPO's reward margins
                        extra_fields.append(self.objective.last_fields)
                total = total / self.accum
                (self.scaler.scale(total) if self.scaler else total).backward()
            loss_sum += loss.item()
        distributed.finish_gradients(self.model, ctx)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = distributed.clip_grad_norm(self.model, ctx, cfg.grad_clip or math.inf)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.samples_seen += self.global_batch
        loss_mean, norm_mean = ctx.mean([loss_sum / self.accum, norm])
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds = time.perf_counter() - start
        tokens = self.global_batch * cfg.seq_len
        entry = {"type": "train", "step": self.step, "loss": loss_mean, "lr": lr, "grad_norm": norm_mean,
                 "tokens": self.samples_seen * cfg.seq_len, "tokens_per_s": tokens / seconds,
                 "mfu": tokens / seconds * self.flops_per_token / (self.peak_flops * ctx.world_size),
                 "step_s": seconds}
        if extra_fields:  # this rank's micro-batches; the loss above is the all-rank mean
            entry.update(mean_fields(extra_fields))
        return entry

    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Mean validation cross-entropy (no label smoothing) and perplexity over all ranks."""
        if self.val_data is None or self.cfg.eval_sequences == 0:
            return None
        if hasattr(self.val_data, "validation_batches"):  # a synthetic task's held-out split
            batches = self.val_data.validation_batches(self.cfg.eval_sequences, self.ctx.dp_rank, self.world,
                                                       self.cfg.micro_batch_size)
        else:
            batches = validation_batches(self.val_data, self.cfg.seq_len, self.cfg.eval_sequences, self.ctx.dp_rank,
                                         self.world, self.cfg.micro_batch_size)
        self.model.eval()
        total, count, extra = 0.0, 0, {}
        for batch in batches:
            batch = batch.to(self.ctx.device)
            with self._autocast():
                if self.pipeline is not None:
                    batch_total, batch_count, *fields = self.pipeline.eval_sums(batch)
                else:
                    batch_total, batch_count, *fields = self.objective.eval_sums(self.model, batch)
            total += batch_total
            count += batch_count
            for key, value in (fields[0] if fields else {}).items():  # sums over the same count
                extra[key] = extra.get(key, 0.0) + value
        self.model.train()
        # a TP group counts its batches tp times: the ratios hold
        total, count, *sums = self.ctx.sum([total, count, *extra.values()])
        if count == 0:
            return None
        val = total / count
        return {"type": "val", "step": self.step, "val_loss": val, "val_ppl": math.exp(min(val, 50.0)),
                **{f"val_{key}": value / count for key, value in zip(extra, sums)}}

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, elapsed: float) -> dict:
        """Write a checkpoint (rank 0; every rank joins the gather). Returns the full model state
        dict on rank 0 ({} elsewhere) for the export."""
        model_sd, optim_sd = distributed.full_state(self.model, self.optimizer, self.ctx)
        if self.ctx.is_main:
            if self._trainable_only:  # adapters only: the frozen base is the source model's
                trains = self._trainable_names()
                model_sd = {k: v for k, v in model_sd.items() if k in trains}
            for alias, target in tied_pairs(self.model_cfg):  # FSDP gathers the tied matrix twice: store it once
                if target in model_sd:
                    model_sd[alias] = model_sd[target]
            state = {"step": self.step, "samples_seen": self.samples_seen, "tokens_seen": self.samples_seen * self.cfg.seq_len,
                     "seed": self.cfg.seed, "world_size": self.world, "elapsed_s": elapsed,
                     "rng": "torch.manual_seed(step_seed(seed, step, rank)) at the start of every step",
                     "grad_scaler": self.scaler.state_dict() if self.scaler else None}
            ckpt.save_checkpoint(self.run_dir, self.step, model_sd, optim_sd, self.model_cfg, self.cfg.to_dict(),
                                 state, keep=self.cfg.keep_checkpoints)
            if self.cfg.plot:
                plot_losses(self.log.entries(), self.run_dir / "loss.png", title=f"{self.cfg.preset}: {self.run_dir.name}")
        self.ctx.barrier()
        return model_sd

    def export(self, model_sd: dict) -> str | None:
        """RUN_DIR/model as an HF checkpoint with the dataset's tokenizer (rank 0)."""
        if not (self.ctx.is_main and self.cfg.export_hf):
            return None
        if self.recipe is not None and self.recipe.export is not None:
            return self.recipe.export(distributed.unwrap(self.model), self.run_dir)
        model = build_model(self.model_cfg)
        model.load_state_dict(model_sd)
        if hasattr(self.train_data, "tokenizer"):  # a synthetic task brings its own vocabulary
            tokenizer = self.train_data.tokenizer()
        else:
            tokenizer = dataset_tokenizer(self.cfg.data_dir, self.train_data.manifest)
        exported = export_hf(model, self.run_dir / "model", tokenizer)
        if self.cfg.qat and isinstance(model, Decoder):
            self.export_quantized(model, tokenizer)
        return exported

    def export_quantized(self, model: Decoder, tokenizer) -> Path:
        """RUN_DIR/quantized: the QAT model converted to the codes its fake-quant forward used
        (compress/qat.py), as a `hybridlm quantize` directory. Mutates `model` (a fresh copy)."""
        from ..checkpoints.quantized import save_quantized
        from ..compress.qat import QATSpec, convert_qat, prepare_qat, qat_summary

        spec = QATSpec.parse(self.cfg.qat)
        prepare_qat(model, spec)
        convert_qat(model)
        return save_quantized(model, tokenizer, self.run_dir / "quantized", qat_summary(spec), overwrite=True)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg, ctx = self.cfg, self.ctx
        self.model.train()
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", file=sys.stderr,
                   dynamic_ncols=True, disable=not (ctx.is_main and cfg.progress))
        entry, val, step_seconds, start = None, None, [], time.perf_counter()
        stop_reason = "max_steps" if self.step >= cfg.max_steps else None
        while stop_reason is None:
            entry = self.train_step()
            step_seconds.append(entry["step_s"])
            elapsed = time.perf_counter() - start
            timed_out = cfg.max_time_s is not None and ctx.sum([float(elapsed >= cfg.max_time_s)])[0] > 0
            if self.step >= cfg.max_steps:
                stop_reason = "max_steps"
            elif cfg.stop_at_step is not None and self.step >= cfg.stop_at_step:
                stop_reason = "stop_at_step"
            elif timed_out:
                stop_reason = "max_time_s"
            entry["elapsed_s"] = self.prior_elapsed + elapsed
            self.log.write(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{entry['loss']:.3f}", tok_s=f"{entry['tokens_per_s']:.0f}",
                            mfu=f"{entry['mfu']:.1%}", lr=f"{entry['lr']:.2e}")
            if (cfg.eval_every and self.step % cfg.eval_every == 0) or stop_reason in ("max_steps", "max_time_s"):
                val = self.evaluate() or val
                if val is not None and val["step"] == self.step:
                    self.log.write(val)
                    if ctx.is_main:
                        bar.write(f"step {self.step}: val loss {val['val_loss']:.4f}, ppl {val['val_ppl']:.2f}",
                                  file=sys.stderr)
            if (cfg.save_every and self.step % cfg.save_every == 0) or stop_reason is not None:
                model_sd = self.save(self.prior_elapsed + elapsed)
        bar.close()
        elapsed = time.perf_counter() - start
        exported = None
        if stop_reason in ("max_steps", "max_time_s"):
            if entry is None:  # nothing to do: the run had finished before this invocation
                model_sd = distributed.full_state(self.model, self.optimizer, ctx)[0]
            exported = self.export(model_sd)
        steady = step_seconds[1:] or step_seconds  # the first step pays for allocator and kernel warm-up
        tok_s = len(steady) * self.global_batch * cfg.seq_len / sum(steady) if steady else 0.0
        return TrainResult(self.run_dir, self.step, self.samples_seen * cfg.seq_len,
                           entry["loss"] if entry else float("nan"), val["val_loss"] if val else None, tok_s,
                           tok_s * self.flops_per_token / (self.peak_flops * ctx.world_size), self.params, elapsed,
                           self.step >= cfg.max_steps, exported)


def train(cfg: TrainConfig, model: Decoder | None = None, recipe: Recipe | None = None) -> TrainResult:
    """Train (or, with cfg.resume, continue) the run described by `cfg`. Under torchrun, every rank
    calls this; only rank 0 writes. Writes RUN_DIR/{log.jsonl, loss.png, train_config.json,
    checkpoints/, model/}. model: start from this model's weights and config instead of a fresh
    `cfg.preset` (pruning's recovery fine-tuning, finetune/); one process trains it in place.
    recipe: the data, objective and export of a fine-tuning method instead of cfg.data_dir's."""
    if (cfg.pp, cfg.ep, cfg.cp) != (1, 1, 1):
        if model is not None or recipe is not None:
            raise TrainConfigError("--pp, --ep and --cp pre-train a preset (not a given model or a fine-tuning recipe)")
        from .model_parallel import check_layout

        overrides = dict(cfg.model_overrides, **({} if cfg.dropout is None else {"dropout": cfg.dropout}))
        check_layout(cfg, get_preset(cfg.preset, **overrides))  # before anything loads
    ctx = distributed.setup(cfg.device, cfg.fsdp, cfg.tp, cfg.pp, cfg.cp, cfg.ep)
    try:
        return Trainer(cfg, ctx, model, recipe).run()
    finally:
        distributed.teardown(ctx)


def read_log(run_dir: str | Path) -> list[dict]:
    """The entries of RUN_DIR/log.jsonl."""
    return RunLog(Path(run_dir) / "log.jsonl").entries()

