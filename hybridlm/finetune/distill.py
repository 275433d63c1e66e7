"""Knowledge distillation (Hinton et al. 2015): a student learns from a teacher's softened outputs.

    loss = (1 - alpha) CE(student, labels)
         + alpha T^2 KL(softmax(teacher / T) || softmax(student / T))      (per token, mean)
         + hidden_weight MSE(proj(h_student), h_teacher)                   (optional)

T^2 keeps the soft term's gradients on the scale of the hard term's as T grows (Hinton et al.,
sec. 2). h is the final hidden state (after the final norm), and proj a learned linear map from
the student's width to the teacher's, trained with the student and dropped at export. Teacher and
student may differ in depth, width and architecture (a Transformer teacher and a hybrid Mamba
student is how Nemotron-H's smaller models were made), but they must share one tokenizer: the KL
compares distributions over the same vocabulary, id for id.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..train.loss import lm_loss


@dataclass
class DistillConfig:
    temperature: float = 2.0  # T: softens both distributions
    alpha: float = 0.5  # weight of the soft (KL) term; 1 - alpha goes to cross-entropy on the labels
    hidden_weight: float = 0.0  # weight of the hidden-state MSE through a learned projection; 0 = off

    def __post_init__(self) -> None:
        if self.temperature <= 0 or not 0 <= self.alpha <= 1 or self.hidden_weight < 0:
            raise ValueError("distillation needs temperature > 0, alpha in [0, 1] and hidden_weight >= 0")


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(p_teacher || p_student) at temperature T, mean over tokens, float32. logits (B, T, V)."""
    s = F.log_softmax(student_logits.float() / temperature, -1).flatten(0, -2)
    t = F.log_softmax(teacher_logits.float() / temperature, -1).flatten(0, -2)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


@contextlib.contextmanager
def final_hidden(model: nn.Module):
    """Inside, a forward of `model` (a Decoder) leaves its final hidden state (B, T, d_model), after the
    final norm, in the yielded dict under "h"."""
    got: dict = {}
    handle = model.final_norm.register_forward_hook(lambda m, i, o: got.__setitem__("h", o))
    try:
        yield got
    finally:
        handle.remove()


class Student(nn.Module):
    """The student Decoder and, for hidden-state matching, its projection to the teacher's width: one
    module, so the trainer optimises and checkpoints both. forward -> (logits, projected hidden or None)."""

    def __init__(self, student: nn.Module, teacher_width: int | None = None):
        super().__init__()
        self.student = student
        self.proj = None if teacher_width is None else nn.Linear(student.config.d_model, teacher_width, bias=False)

    @property
    def config(self):
        return self.student.config

    @property
    def blocks(self):  # activation checkpointing wraps these
        return self.student.blocks

    def forward(self, input_ids: torch.Tensor, **kwargs):
        if self.proj is None:
            return self.student(input_ids, **kwargs), None
        with final_hidden(self.student) as got:
            logits = self.student(input_ids, **kwargs)
        return logits, self.proj(got["h"])


class DistillObjective:
    """Over token-shard batches (B, T + 1), as pre-training. The teacher runs frozen, without gradients."""

    def __init__(self, teacher: nn.Module, cfg: DistillConfig):
        self.teacher, self.cfg = teacher.eval(), cfg
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.last_fields: dict = {}

    def loss(self, model, batch: torch.Tensor, label_smoothing: float = 0.0, **kwargs) -> torch.Tensor:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits, hidden = model(inputs, **kwargs)
        with torch.no_grad():
            if hidden is None:
                teacher_logits = self.teacher(inputs)
            else:
                with final_hidden(self.teacher) as got:
                    teacher_logits = self.teacher(inputs)
        ce = lm_loss(logits, targets, label_smoothing)
        kl = distill_kl(logits, teacher_logits, self.cfg.temperature)
        loss = (1 - self.cfg.alpha) * ce + self.cfg.alpha * kl
        self.last_fields = {"ce": ce.item(), "kl": kl.item()}
        if hidden is not None:
            mse = F.mse_loss(hidden.float(), got["h"].float())
            loss = loss + self.cfg.hidden_weight * mse
            self.last_fields["hidden_mse"] = mse.item()
        return loss

    def eval_sums(self, model, batch: torch.Tensor) -> tuple[float, int]:
        """The student's plain cross-entropy: comparable with a student trained without a teacher."""
        logits, _ = model(batch[:, :-1])
        return lm_loss(logits, batch[:, 1:], reduction="sum").item(), batch[:, 1:].numel()


def check_same_tokenizer(teacher_tok, data_tok, teacher_name: str) -> None:
    """A teacher whose vocabulary differs from the data's (and so the student's) is refused."""
    if data_tok is None:
        raise ValueError("the dataset names no tokenizer, so the teacher's cannot be checked against it; "
                         "prepare it with `hybridlm data prepare --tokenizer TEACHER`")
    if teacher_tok.backend.get_vocab() != data_tok.backend.get_vocab():
        raise ValueError(f"the teacher {teacher_name} uses a different tokenizer than the data and student "
                         f"(vocab {teacher_tok.vocab_size} vs {data_tok.vocab_size}): distillation compares "
                         "distributions id for id, so both need one tokenizer (prepare the data with the teacher's)")
