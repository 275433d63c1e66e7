"""Beam search over one prompt, with the cache reordered as beams are chosen.

It follows transformers' beam search (`generate(num_beams=k, do_sample=False)`) step for step, so
the best beam matches it (tested):
  - each step keeps the top max(2, 1 + n_eos) * k continuations over all beams, ranked by summed
    log-probability, so k live beams survive even if the top k all end in EOS;
  - a continuation that ends in EOS (or reaches max_new_tokens) becomes a finished hypothesis only if
    it ranks among the top k, scored sum_logprob / n ** length_penalty, n = generated tokens, EOS
    included; the best k finished hypotheses are kept;
  - the search stops when no live beam can beat the worst kept hypothesis (estimated at the current
    length, or at max_new_tokens with early_stopping="never" and length_penalty > 0), or, with
    early_stopping=True, as soon as k hypotheses are finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .generate import eos_ids


@dataclass
class BeamHypothesis:
    tokens: list[int]  # generated ids, without the final EOS
    score: float  # log_prob / n ** length_penalty, n = generated tokens counting the EOS
    log_prob: float  # summed token log-probabilities (EOS included)
    finish_reason: str  # "eos" or "length"


@dataclass
class BeamSearchResult:
    hypotheses: list[BeamHypothesis]  # best first, at most num_beams

    @property
    def best(self) -> list[int]:
        return self.hypotheses[0].tokens


def _check(prompt, num_beams, max_new_tokens, early_stopping, vocab_size) -> None:
    if not prompt:
        raise ValueError("beam search needs a non-empty prompt")
    if min(prompt) < 0 or max(prompt) >= vocab_size:
        raise ValueError(f"prompt has token ids outside [0, {vocab_size})")
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


def beam_search(model: nn.Module, prompt: list[int], num_beams: int, max_new_tokens: int,
                length_penalty: float = 1.0, eos_token_ids: Sequence[int] | None = None,
                early_stopping: bool | str = False, *, cache_kind: str = "dynamic") -> BeamSearchResult:
    """The num_beams best continuations of `prompt` (token ids), best first.

    eos_token_ids: None = the model config's eos_token_id; () = no EOS (every beam runs to length).
    The prompt is prefilled once with batch 1; the first `cache.reorder` fans it out to the beams.
    """
    cfg = model.config
    _check(prompt, num_beams, max_new_tokens, early_stopping, cfg.vocab_size)
    if len(prompt) + max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"the model's context of {cfg.max_seq_len} tokens")
    eos = eos_ids(model, None if eos_token_ids is None else tuple(eos_token_ids))
    n_candidates = max(2, 1 + len(eos)) * num_beams
    device, vocab = model.device, cfg.vocab_size
    finished: list[BeamHypothesis] = []
    with torch.inference_mode():
        cache = model.new_cache(1, kind=cache_kind, max_len=len(prompt) + max_new_tokens)
        logits = model(torch.tensor([prompt], device=device), cache, last_only=True)[:, -1]  # (beams, V)
        beams: list[list[int]] = [[]]
        scores = torch.zeros(1, device=device)  # summed log-probs of the live beams, float32
        for step in range(max_new_tokens):
            n_gen, last = step + 1, step + 1 == max_new_tokens
            total = F.log_softmax(logits.float(), dim=-1) + scores[:, None]  # (beams, V)
            top, index = total.flatten().topk(min(n_candidates, total.numel()))
            live: list[tuple[int, int, float]] = []  # (beam row, token, summed log-prob), best first
            for rank, (s, i) in enumerate(zip(top.tolist(), index.tolist())):
                row, token = divmod(i, vocab)
                if token in eos or last:
                    if rank < num_beams:  # lower-ranked endings only exist as backups
                        done = beams[row] if token in eos else beams[row] + [token]
                        reason = "eos" if token in eos else "length"
                        finished.append(BeamHypothesis(done, s / n_gen ** length_penalty, s, reason))
                elif len(live) < num_beams:
                    live.append((row, token, s))
            finished.sort(key=lambda h: -h.score)
            del finished[num_beams:]
            if not live or _done(finished, live[0][2], num_beams, n_gen, max_new_tokens, length_penalty,
                                 early_stopping):
                break
            rows, tokens, sums = (list(column) for column in zip(*live))
            beams = [beams[r] + [t] for r, t in zip(rows, tokens)]
            cache.reorder(torch.tensor(rows, device=device))
            scores = torch.tensor(sums, device=device)
            logits = model(torch.tensor(tokens, device=device)[:, None], cache, last_only=True)[:, -1]
    return BeamSearchResult(finished)


def _done(finished: list[BeamHypothesis], best_live: float, num_beams: int, n_gen: int,
          max_new_tokens: int, length_penalty: float, early_stopping: bool | str) -> bool:
    """Whether the search can stop: the finished list is full and either early_stopping=True or
    the best live beam cannot beat the worst finished hypothesis (transformers' heuristic)."""
    if len(finished) < num_beams:
        return False
    if early_stopping is True:
        return True
    length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else n_gen
    return not best_live / length ** length_penalty > finished[-1].score
