"""Direct preference optimisation (Rafailov et al. 2023, eq. 7) and two variants, as TRL computes them.

With per-sequence log-probabilities of the completion under the policy (pi) and a frozen reference
(ref), the implicit reward of a completion y is r(y) = log pi(y|x) - log ref(y|x), and with
d = r(chosen) - r(rejected):

    sigmoid   -log sigmoid(beta d)                             (DPO; with label smoothing e:
              -(1 - e) log sigmoid(beta d) - e log sigmoid(-beta d), conservative DPO / cDPO)
    robust    (-(1 - e) log sigmoid(beta d) + e log sigmoid(-beta d)) / (1 - 2e)
              (Chowdhury et al. 2024: unbiased under a flip rate e of the preference labels)
    ipo       (d' - 1 / (2 beta))^2 with d' from per-token mean log-ratios (Azar et al. 2023; the
              length normalisation is TRL's, confirmed there with the IPO authors)

The reference is the same weights with the LoRA adapters switched off (one copy of the model), or a
frozen copy of the starting model for full-parameter DPO. Logged: rewards beta r(y) of chosen and
rejected, their margin, and the accuracy (share of pairs whose chosen reward is higher).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..nn.lora import adapters_disabled, lora_modules
from ..train.objectives import IGNORE
from .data import DataError, ExampleSet, SFTBatch, check_messages, collate, encode_conversation, encode_pair, to_example

LOSS_TYPES = ("sigmoid", "robust", "ipo")


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(target) over each row's trained tokens, float32, and how many. logits (B, T, V),
    targets (B, T) with IGNORE -> (B,), (B,)."""
    mask = targets != IGNORE
    logp = torch.log_softmax(logits.float(), -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (logp * mask).sum(-1), mask.sum(-1)


def dpo_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float, loss_type: str = "sigmoid",
               label_smoothing: float = 0.0, chosen_len=None, rejected_len=None) -> torch.Tensor:
    """Per-pair losses (B,) from per-sequence log-probs (B,) each (see the module doc). chosen_len and
    rejected_len (B,): completion token counts, needed by ipo."""
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    if loss_type == "ipo":
        d = chosen_ratio / chosen_len.clamp(min=1) - rejected_ratio / rejected_len.clamp(min=1)
        return (d - 1 / (2 * beta)) ** 2
    d = beta * (chosen_ratio - rejected_ratio)
    if loss_type == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(d) - label_smoothing * F.logsigmoid(-d)
    if loss_type == "robust":
        return (-(1 - label_smoothing) * F.logsigmoid(d) + label_smoothing * F.logsigmoid(-d)) / (1 - 2 * label_smoothing)
    raise ValueError(f"unknown DPO loss {loss_type!r}; known: {', '.join(LOSS_TYPES)}")


@dataclass
class DPOConfig:
    beta: float = 0.1  # strength of the KL anchor to the reference (higher: stay closer)
    loss_type: str = "sigmoid"  # sigmoid (DPO, cDPO with label smoothing), robust, or ipo
    label_smoothing: float = 0.0  # assumed share of flipped preference labels (sigmoid: cDPO; robust)

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown DPO loss {self.loss_type!r}; known: {', '.join(LOSS_TYPES)}")
        if self.beta <= 0 or not 0 <= self.label_smoothing < 0.5:
            raise ValueError("DPO needs beta > 0 and label smoothing in [0, 0.5)")


class DPOObjective:
    """Batches are SFTBatches of 2B rows: B chosen, then the same B prompts' rejected completions.
    reference: a frozen model, or None to use the policy with its LoRA adapters switched off."""

    def __init__(self, cfg: DPOConfig, reference: nn.Module | None = None):
        self.cfg, self.reference = cfg, reference
        self.last_fields: dict = {}

    def _pair_terms(self, model, batch: SFTBatch):
        logps, lengths = sequence_logps(model(batch.inputs), batch.targets)
        with torch.no_grad():
            if self.reference is not None:
                ref_logps, _ = sequence_logps(self.reference(batch.inputs), batch.targets)
            else:
                with adapters_disabled(getattr(model, "module", model)):
                    ref_logps, _ = sequence_logps(model(batch.inputs), batch.targets)
        pc, pr = logps.chunk(2)
        rc, rr = ref_logps.chunk(2)
        lc, lr = lengths.chunk(2)
        losses = dpo_losses(pc, pr, rc, rr, self.cfg.beta, self.cfg.loss_type, self.cfg.label_smoothing, lc, lr)
        chosen_reward, rejected_reward = self.cfg.beta * (pc - rc).detach(), self.cfg.beta * (pr - rr).detach()
        return losses, chosen_reward, rejected_reward

    def loss(self, model, batch: SFTBatch, label_smoothing: float = 0.0, **kwargs) -> torch.Tensor:
        losses, cr, rr = self._pair_terms(model, batch)
        self.last_fields = {"reward_chosen": cr.mean().item(), "reward_rejected": rr.mean().item(),
                            "reward_margin": (cr - rr).mean().item(), "reward_accuracy": (cr > rr).float().mean().item()}
        return losses.mean()

    def eval_sums(self, model, batch: SFTBatch) -> tuple[float, int, dict]:
        losses, cr, rr = self._pair_terms(model, batch)
        return losses.sum().item(), len(losses), {"reward_margin": (cr - rr).sum().item(),
                                                  "reward_accuracy": (cr > rr).float().sum().item()}


def frozen_copy(model: nn.Module) -> nn.Module:
    """The reference for full-parameter DPO: a deep copy, in eval mode, with no gradients."""
    if lora_modules(model):
        raise ValueError("a LoRA model's reference is itself with adapters disabled; no copy needed")
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def encode_preference(tokenizer, record: dict, where: str, seq_len: int):
    """A preference line -> ((chosen inputs, targets), (rejected inputs, targets)). Accepted: prompt,
    chosen and rejected as strings; or as message lists (prompt optional: TRL's implicit prompt)."""
    if "chosen" not in record or "rejected" not in record:
        raise DataError(f"{where}: a preference needs 'chosen' and 'rejected' (and usually 'prompt')")
    prompt, pair = record.get("prompt"), (record["chosen"], record["rejected"])
    if all(isinstance(x, str) for x in (prompt, *pair)):
        encoded = [encode_pair(tokenizer, prompt, c) for c in pair]
    elif all(isinstance(x, list) for x in pair) and (prompt is None or isinstance(prompt, list)):
        encoded = [encode_conversation(tokenizer, check_messages((prompt or []) + c, where), where) for c in pair]
    else:
        raise DataError(f"{where}: prompt, chosen and rejected must all be strings or all message lists")
    return tuple(to_example(ids, trained, seq_len) for ids, trained in encoded)


class PreferenceSet(ExampleSet):
    """Pairs batched as [chosen rows; rejected rows] (never packed)."""

    def _collate(self, rows: list[list]) -> SFTBatch:
        pairs = [row[0] for row in rows]
        return collate([[c] for c, _ in pairs] + [[r] for _, r in pairs], self.pad_id, packed=False)
