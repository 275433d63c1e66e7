"""Training and scoring a vision-language model on the shapes task (shapes.py).

`fit` trains the parameters it is given (the rest stay frozen) with AdamW and a cosine schedule on
cross-entropy of the answer and the </s> after it; `answer_accuracy` is the share of held-out
questions whose most likely next token after the question is the answer (what greedy generation
writes first). A text-only `Decoder` trains and scores the same way, without the pixels.
"""

from __future__ import annotations

import math
import time

import torch
from torch.nn import functional as F
from tqdm import tqdm

from .config import VisionConfig
from .prompt import expand_placeholders
from .shapes import ShapesBatch, ShapesTask


def _logits(model, batch: ShapesBatch, cfg: VisionConfig) -> tuple[torch.Tensor, int]:
    """Logits of the batch and the column whose logits predict the answer."""
    ids = batch.ids
    if not hasattr(model, "vision_config"):  # a text-only decoder sees the <image> marker, not the pixels
        return model(ids), ShapesBatch.ANSWER_AT - 1
    ids = torch.tensor([expand_placeholders(row, cfg) for row in ids.tolist()])
    shift = cfg.tokens_per_image - 1
    return model(ids, list(batch.pixels[:, None])), ShapesBatch.ANSWER_AT - 1 + shift


def answer_loss(model, batch: ShapesBatch, cfg: VisionConfig) -> torch.Tensor:
    """Mean cross-entropy of the answer and the </s> after it."""
    logits, at = _logits(model, batch, cfg)
    pred = logits[:, at:at + 2].float()  # (B, 2, V)
    return F.cross_entropy(pred.flatten(0, 1), batch.ids[:, ShapesBatch.ANSWER_AT:].flatten())


@torch.no_grad()
def answer_accuracy(model, task: ShapesTask, cfg: VisionConfig, n: int, batch_size: int = 128,
                    by_kind: bool = False) -> float | dict[str, float]:
    """Share of the first n examples of `task` whose argmax next token after the question is the
    answer; with by_kind, a dict of that share per question kind (shapes.question_kind) and "all"."""
    from .shapes import question_kind

    was = model.training
    model.eval()
    right, seen = {}, {}
    for first in range(0, n, batch_size):
        batch = task.batch(first, min(batch_size, n - first), cfg)
        logits, at = _logits(model, batch, cfg)
        hits = (logits[:, at].argmax(-1) == batch.answers).tolist()
        for ex, hit in zip(batch.examples, hits):
            for key in ("all", question_kind(ex.question)):
                right[key] = right.get(key, 0) + hit
                seen[key] = seen.get(key, 0) + 1
    model.train(was)
    if by_kind:
        return {k: right[k] / seen[k] for k in seen}
    return right["all"] / seen["all"]


def fit(model, params: list[torch.nn.Parameter], task: ShapesTask, cfg: VisionConfig, steps: int,
        batch_size: int = 64, lr: float = 3e-3, warmup: int = 50, desc: str = "train",
        max_seconds: float | None = None, on_step=None) -> dict:
    """Train `params` of `model` (others frozen) for `steps` AdamW steps. Returns {steps, seconds, loss}.
    on_step(step, loss): called after each step (e.g. to score the model now and then)."""
    trainable = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    start, loss = time.perf_counter(), float("nan")
    bar = tqdm(range(steps), desc=desc, leave=False)
    done = 0
    for step in bar:
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.02)
        batch = task.batch(step * batch_size, batch_size, cfg)
        value = answer_loss(model, batch, cfg)
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss, done = value.item(), step + 1
        bar.set_postfix(loss=f"{loss:.3f}")
        if on_step is not None:
            on_step(done, loss)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return {"steps": done, "seconds": time.perf_counter() - start, "loss": loss}
