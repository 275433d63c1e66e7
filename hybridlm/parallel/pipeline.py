"""Pipeline parallelism on `torch.distributed.pipelining`: a built `Decoder` cut into contiguous
stages of blocks, run by torch's GPipe or 1F1B schedule over micro-batches.

    stage 0        token (and learned position) embedding, blocks [0, n_0)
    stage s        blocks [n_{s-1}, n_s)                (the hidden state (B, T, d_model) in and out)
    stage pp - 1   ..., final norm and LM head -> logits (B, T, V); the loss is taken there

Blocks are spread as evenly as counts allow (analysis/parallel.py `stage_blocks`, the cost model's
split). Each stage keeps the full model's parameter names ("blocks.7.mixer.wqkv.weight"), so its
state dict is a slice of the unsplit one. Every stage recomputes the positions and RoPE tables of a
cache-free forward from the micro-batch's shape (no side channel between stages is needed).

Not covered: the MoE load-balancing loss (torch's schedules carry only the stage outputs, so the
router is trained by the language-model loss alone under --pp), interleaved (virtual-stage)
schedules, and caches (generation under pp).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..analysis.parallel import stage_blocks
from ..models.decoder import Decoder, positions_without_cache
from ..nn.positions import sinusoidal_embedding

SCHEDULES = ("gpipe", "1f1b")


class StageModule(nn.Module):
    """Blocks [first, last) of a Decoder, with the embedding on stage 0 and the head on the last."""

    def __init__(self, model: Decoder, blocks: range, is_first: bool, is_last: bool):
        super().__init__()
        self.config, self.is_first, self.is_last = model.config, is_first, is_last
        self.embed = model.embed if is_first else None
        self.pos_embed = model.pos_embed if is_first else None
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in blocks})
        self.final_norm = model.final_norm if is_last else None
        self.lm_head = model.lm_head if is_last else None
        self.register_buffer("rope_inv_freq", model.rope_inv_freq, persistent=False)
        self.register_buffer("alibi_slopes", model.alibi_slopes, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stage 0: input_ids (B, T) int64; later stages: hidden (B, T, d_model). -> hidden, or
        logits (B, T, V) on the last stage."""
        b, t = x.shape[:2]
        step = positions_without_cache(self.config, b, t, None, x.device)
        if self.is_first:
            x = self.embed(x)
            if self.pos_embed is not None:
                x = x + self.pos_embed(step.q_pos)
            elif self.config.position == "sinusoidal":
                x = x + sinusoidal_embedding(step.q_pos, self.config.d_model, x.dtype)
        inputs = Decoder._attention_inputs(self, step, x.dtype)  # the same tables the whole model builds
        for block in self.blocks.values():
            x = block(x, inputs, None)
        return self.lm_head(self.final_norm(x)) if self.is_last else x


def check_pipeline(model, pp: int) -> None:
    """Raise ValueError naming what `model` (a Decoder, or its ModelConfig) cannot split into pp stages."""
    cfg = getattr(model, "config", model)
    if cfg.family != "decoder":
        raise ValueError(f"pipeline parallelism covers decoder models; this is a {cfg.family} model")
    if cfg.tie_embeddings and pp > 1:
        raise ValueError("pipeline parallelism needs untied embeddings (the first and last stages would "
                         "each hold, and update, their own copy of the tied matrix): set tie_embeddings=false")
    if cfg.dropout:
        raise ValueError("pipeline parallelism here runs without dropout (set dropout=0)")
    stage_blocks(len(cfg.blocks), pp)  # raises when there are more stages than blocks


def build_stage(model: Decoder, pp_mesh) -> StageModule:
    """This rank's stage of `model` over the 1-D mesh `pp_mesh` (the rest of the model is dropped)."""
    pp, s = pp_mesh.size(), pp_mesh.get_local_rank()
    check_pipeline(model, pp)
    return StageModule(model, stage_blocks(len(model.blocks), pp)[s], s == 0, s == pp - 1)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The next-token cross-entropy of one micro-batch. The schedules scale each micro-batch's
    gradients by 1 / n_microbatches (scale_grads), so the step's gradient is the batch mean's."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def build_schedule(stage: StageModule, pp_mesh, n_microbatches: int, schedule: str = "1f1b"):
    """torch's PipelineStage for this rank and the GPipe or 1F1B schedule over n_microbatches."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    if schedule not in SCHEDULES:
        raise ValueError(f"pipeline schedule must be one of {SCHEDULES}, got {schedule!r}")
    device = next(stage.parameters()).device
    pipe_stage = PipelineStage(stage, pp_mesh.get_local_rank(), pp_mesh.size(), device, group=pp_mesh.get_group())
    cls = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B
    return cls(pipe_stage, n_microbatches=n_microbatches, loss_fn=lm_loss, scale_grads=True)


def pipeline_step(schedule, stage: StageModule, inputs: torch.Tensor, targets: torch.Tensor) -> float | None:
    """One forward + backward of a batch (inputs, targets: (B, T) int64, B divisible by the micro-batch
    count; every rank passes the same batch). Gradients accumulate in the stage's parameters. Returns
    the batch's mean loss on the last stage, None elsewhere."""
    if stage.is_first:
        schedule.step(inputs)
        return None
    if stage.is_last:
        losses: list[torch.Tensor] = []
        schedule.step(target=targets, losses=losses)
        return float(torch.stack(losses).mean())
    schedule.step()
    return None


@torch.no_grad()
def pipeline_eval_sums(stage: StageModule, pp_mesh, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    """A validation forward without the schedule: each stage receives the hidden state (B, T,
    d_model) from the previous one and sends its own on (float32 on the wire). -> (summed
    next-token cross-entropy, token count) on the last stage, (0.0, 0) elsewhere. Collective."""
    import torch.distributed as dist

    group, s = pp_mesh.get_group(), pp_mesh.get_local_rank()
    x = inputs
    if not stage.is_first:
        b, t = inputs.shape
        x = torch.empty(b, t, stage.config.d_model, dtype=torch.float32, device=inputs.device)
        dist.recv(x, src=dist.get_global_rank(group, s - 1), group=group)
    y = stage(x)
    if not stage.is_last:
        dist.send(y.float().contiguous(), dst=dist.get_global_rank(group, s + 1), group=group)
        return 0.0, 0
    loss = F.cross_entropy(y.flatten(0, 1).float(), targets.flatten(), reduction="sum")
    return float(loss), targets.numel()
