"""Training a model whose ranks hold different parameters: pipeline stages (--pp) and expert slices
(--ep). What DDP does for a whole model is done here by hand, because DDP would average the
gradients of different experts that share a name, and a pipeline stage runs no forward of its own.

    --pp   rank (s, d) holds stage s; the dp ranks holding the same stage all-reduce its gradients.
           One optimizer step: this replica's share of the global batch, cut into micro-batches of
           --micro-batch-size, through torch's 1F1B or GPipe schedule (parallel/pipeline.py)
    --ep   every rank holds the replicated parameters (attention, router, embeddings) and
           n_experts / ep experts, and reads its own tokens (ep = dp). Replicated gradients are
           all-reduced over dp; an expert's gradient already sums every rank's tokens (the
           all-to-all's backward brings them), so it is only divided by dp, as DDP's average would

Checkpoints stay the trainer's consolidated safetensors (train/checkpoint.py): rank 0 gathers
every rank's tensors by parameter name (`gather_state`), and `load_state` gives each rank the names
it holds, so a run saved under --pp or --ep resumes under any layout, or on one process.
The layout checks (`check_layout`) read only the config, so a refusal comes before anything loads.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ..config import ModelConfig
from ..parallel.context import check_context_parallel
from ..parallel.expert import check_expert_parallel
from ..parallel.pipeline import build_schedule, check_pipeline, pipeline_eval_sums, pipeline_step
from .config import TrainConfig, TrainConfigError


def check_layout(cfg: TrainConfig, model_cfg: ModelConfig) -> None:
    """Raise TrainConfigError naming the first thing the model cannot split as --pp/--ep/--cp ask."""
    try:
        if cfg.pp > 1:
            check_pipeline(model_cfg, cfg.pp)
            if "moe" in model_cfg.blocks and model_cfg.moe_aux_loss_coef:
                raise ValueError("--pp trains MoE models without the load-balancing loss (torch's schedules carry "
                                 "only the stage outputs): set moe_aux_loss_coef=0")
        if cfg.ep > 1:
            check_expert_parallel(model_cfg, cfg.ep)
        if cfg.cp > 1:
            check_context_parallel(model_cfg, cfg.cp, cfg.seq_len)
            if model_cfg.dropout and cfg.cp_attention == "ring":
                raise ValueError("ring attention runs without dropout: set dropout=0 or --cp-attention allgather")
    except ValueError as e:
        raise TrainConfigError(str(e)) from None


def _is_expert(name: str) -> bool:
    return ".experts." in name


def _split_by_experts(model: nn.Module, ep: int) -> tuple[list, list]:
    """(parameters every data-parallel rank holds, this rank's expert parameters), with gradients."""
    shared, experts = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (experts if ep > 1 and _is_expert(name) else shared).append(p)
    return shared, experts


@torch.no_grad()
def reduce_gradients(model: nn.Module, ctx) -> None:
    """Average the gradients over the data-parallel ranks (see the module docstring). Mutates .grad."""
    dp = ctx.layout.dp
    if dp == 1:
        return
    shared, _ = _split_by_experts(model, ctx.layout.ep)
    for p in shared:
        if p.grad is None:  # a rank may skip what another used: all must send the same buffer
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in shared]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, group=ctx.mesh["dp"].get_group())
    for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(reduced)
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(dp)


@torch.no_grad()
def clip_gradients(model: nn.Module, ctx, max_norm: float) -> float:
    """The global gradient norm of the split model (stages add up over pp; expert slices over ep;
    replicated parameters once), clipped to max_norm as torch.nn.utils.clip_grad_norm_ does."""
    shared, experts = _split_by_experts(model, ctx.layout.ep)
    sums = torch.zeros(2, dtype=torch.float64)
    for i, params in enumerate((shared, experts)):
        for p in params:
            if p.grad is not None:
                sums[i] += p.grad.double().pow(2).sum().cpu()
    if ctx.layout.pp > 1:
        dist.all_reduce(sums, group=ctx.mesh["pp"].get_group())
    if ctx.layout.ep > 1:
        own = sums[1:].clone()
        dist.all_reduce(own, group=ctx.mesh["dp"].get_group())
        sums[1] = own[0]
    norm = math.sqrt(float(sums.sum()))
    scale = max_norm / (norm + 1e-6)
    if scale < 1.0:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
    return norm


def _canonical_order(config: ModelConfig) -> dict[str, int]:
    """Parameter name -> its place in the unsplit model's optimizer groups (built on the meta device)."""
    from ..models import build_model
    from .optim import decay_groups

    with torch.device("meta"):
        whole = build_model(config)
    decay, no_decay = decay_groups(whole)
    return {name: i for i, name in enumerate(decay + no_decay)}


def gather_state(model: nn.Module, optimizer: torch.optim.Optimizer, ctx) -> tuple[dict, dict]:
    """`distributed.full_state` of a stage or expert-split model: rank 0 gets the unsplit model's
    state dict and an optimizer state dict keyed by parameter name ({} elsewhere). Collective."""
    from .distributed import _optimizer_names

    names = _optimizer_names(model, optimizer)
    local = ({n: t.detach().cpu() for n, t in model.state_dict().items()},
             {names[id(p)]: {k: v.detach().cpu() for k, v in s.items()} for p, s in optimizer.state.items()},
             [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups])
    gathered = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(local, gathered, dst=0)
    if not ctx.is_main:
        return {}, {}
    model_sd, state = {}, {}
    group_names: list[set] = [set() for _ in optimizer.param_groups]
    for rank_sd, rank_state, rank_groups in gathered:
        model_sd.update(rank_sd)
        state.update(rank_state)
        for i, group in enumerate(rank_groups):
            group_names[i].update(group)
    order = _canonical_order(model.config)
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": sorted(found, key=order.__getitem__)}
              for g, found in zip(optimizer.param_groups, group_names)]
    return model_sd, {"state": state, "param_groups": groups}


@torch.no_grad()
def load_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict) -> None:
    """Give this rank its pieces of an unsplit checkpoint (as `gather_state` returns). Mutates both."""
    own = model.state_dict()
    missing = sorted(set(own) - set(model_sd))
    if missing:
        raise KeyError(f"the checkpoint lacks {missing[:5]}")
    model.load_state_dict({n: model_sd[n] for n in own})
    for p, name in zip(*_named_params(model, optimizer)):
        saved = optim_sd["state"].get(name)
        if saved is not None:
            optimizer.state[p] = {k: v.clone() if k == "step" else v.to(p.device, copy=True) for k, v in saved.items()}
    for group, saved in zip(optimizer.param_groups, optim_sd["param_groups"]):
        group.update({k: v for k, v in saved.items() if k != "params"})


def _named_params(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[list, list]:
    from .distributed import _optimizer_names

    names = _optimizer_names(model, optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return params, [names[id(p)] for p in params]


class PipelineRunner:
    """The optimizer step and the validation forward of one pipeline stage (see the docstring)."""

    def __init__(self, stage: nn.Module, pp_mesh, n_microbatches: int, schedule: str):
        self.stage, self.mesh = stage, pp_mesh
        self.schedule = build_schedule(stage, pp_mesh, n_microbatches, schedule)

    def _from_last_stage(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, group=self.mesh.get_group())  # every other stage adds 0
        return float(t[0])

    def train(self, batch: torch.Tensor) -> float:
        """Forward and backward of this replica's batch (B, T + 1) int64; gradients accumulate in the
        stage. Returns the batch's mean loss on every stage."""
        loss = pipeline_step(self.schedule, self.stage, batch[:, :-1], batch[:, 1:])
        return self._from_last_stage(loss if loss is not None else 0.0)

    def eval_sums(self, batch: torch.Tensor) -> tuple[float, int]:
        """(summed cross-entropy, tokens) of a validation batch on the last stage, (0, 0) elsewhere."""
        return pipeline_eval_sums(self.stage, self.mesh, batch[:, :-1], batch[:, 1:])
