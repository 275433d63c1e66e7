"""Block by block through a model with calibration data, as GPTQ and AWQ run.

The calibration sequences enter the first block; each block is then quantized and run to give the
next block its inputs, so every later block sees the outputs of the quantized earlier ones (GPTQ's
"sequential" mode). Inside a block, linears are visited in their order of registration (which is
the order they run: wqkv then wo, w_in then w_out, in_proj then out_proj) and each one's inputs are
collected after the ones before it are quantized ("true sequential"); the forward stops at the
linear being collected when it runs once per block forward.

Statistics come from forward pre-hooks on the linears, so the driver needs nothing of a block but
that it is `model.blocks[i]` and maps the hidden states to the next hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from .calibration import Calibration


class _Stop(Exception):
    """Raised inside a forward to skip the rest of it once what is needed has been seen."""


@dataclass
class BlockBatch:
    """One batch's input to a block: hidden (B, T, D) plus the other arguments the block got."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict


class InputStats:
    """Running statistics of one linear's inputs x (tokens, in): X^T X (float32, summed),
    sum |x| per channel and the token count. GPTQ's Hessian is 2 X^T X / n; AWQ's output error of a
    weight change D is trace(D X^T X D^T) / n; k-means weights channels by diag(X^T X) / n."""

    def __init__(self, in_features: int, gram: bool = True):
        self.xtx = torch.zeros(in_features, in_features) if gram else None
        self.abs_sum = torch.zeros(in_features)
        self.sq_sum = torch.zeros(in_features)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float().cpu()
        if self.xtx is not None:
            self.xtx.addmm_(x.T, x)
        self.abs_sum += x.abs().sum(0)
        self.sq_sum += x.square().sum(0)
        self.count += x.shape[0]

    def gram(self) -> torch.Tensor:
        """X^T X / n (in, in) float32."""
        return self.xtx / max(self.count, 1)

    def hessian(self) -> torch.Tensor:
        """GPTQ's H = 2 X^T X / n."""
        return 2 * self.gram()

    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.count, 1)

    def mean_square(self) -> torch.Tensor:
        return self.sq_sum / max(self.count, 1)


def capture_block_inputs(model: nn.Module, calib: Calibration, tokens_per_batch: int = 2048) -> list[BlockBatch]:
    """Run the calibration batches up to the first block and keep what it receives."""
    first = model.blocks[0]
    device = next(model.parameters()).device
    got: list[BlockBatch] = []

    def catch(module, args, kwargs):
        got.append(BlockBatch(args[0], tuple(args[1:]), dict(kwargs)))
        raise _Stop

    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with torch.no_grad():
            for ids in calib.batches(tokens_per_batch):
                try:
                    model(ids.to(device))
                except _Stop:
                    pass
    finally:
        handle.remove()
    return got


def run_block(block: nn.Module, batches: list[BlockBatch]) -> list[BlockBatch]:
    """The block's outputs as the next block's inputs."""
    with torch.no_grad():
        return [BlockBatch(block(b.hidden, *b.args, **b.kwargs), b.args, b.kwargs) for b in batches]


def calls_per_forward(block: nn.Module, batch: BlockBatch, modules: Iterable[nn.Module]) -> dict[nn.Module, int]:
    """How many times each module runs in one forward of `block` (MoE experts run per routed token)."""
    counts = {m: 0 for m in modules}
    handles = [m.register_forward_pre_hook(lambda mod, args: counts.__setitem__(mod, counts[mod] + 1))
               for m in counts]
    try:
        with torch.no_grad():
            block(batch.hidden, *batch.args, **batch.kwargs)
    finally:
        for h in handles:
            h.remove()
    return counts


def collect(block: nn.Module, batches: list[BlockBatch], stats: dict[nn.Module, InputStats],
            stop_at: nn.Module | None = None) -> None:
    """Forward every batch through `block`, adding each watched module's inputs to its stats.
    stop_at: a module run once per forward after which the rest of the block is skipped."""

    def hook(module, args):
        stats[module].add(args[0])
        if module is stop_at:
            raise _Stop

    handles = [m.register_forward_pre_hook(hook) for m in stats]
    try:
        with torch.no_grad():
            for b in batches:
                try:
                    block(b.hidden, *b.args, **b.kwargs)
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()


def block_targets(targets: dict[str, nn.Linear], index: int) -> dict[str, nn.Linear]:
    """The targets inside model.blocks[index], in registration order."""
    prefix = f"blocks.{index}."
    return {name: lin for name, lin in targets.items() if name.startswith(prefix)}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def quantize_sequentially(model: nn.Module, targets: dict[str, nn.Linear], calib: Calibration,
                          quantize: Callable[[str, nn.Linear, InputStats], nn.Module], gram: bool = True,
                          progress: Callable[[Iterable], Iterable] = iter) -> None:
    """For each block, for each target linear in it (in order): collect its input statistics with
    the earlier ones already quantized, then replace it by `quantize(name, linear, stats)`.

    Targets outside model.blocks (lm_head) are quantized last, from the final block's outputs
    through the final norm. Mutates `model` in place."""
    batches = capture_block_inputs(model, calib)
    for i in progress(range(len(model.blocks))):
        block = model.blocks[i]
        inner = block_targets(targets, i)
        if inner:
            counts = calls_per_forward(block, batches[0], inner.values())
        for name, linear in inner.items():
            stats = {linear: InputStats(linear.in_features, gram)}
            collect(block, batches, stats, stop_at=linear if counts[linear] == 1 else None)
            replace_module(model, name, quantize(name, linear, stats[linear]))
        batches = run_block(block, batches)
    if "lm_head" in targets:
        head = targets["lm_head"]
        stats = InputStats(head.in_features, gram)
        with torch.no_grad():
            for b in batches:
                stats.add(model.final_norm(b.hidden))
        replace_module(model, "lm_head", quantize("lm_head", head, stats))
