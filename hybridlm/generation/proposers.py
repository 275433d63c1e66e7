"""Proposers for speculative decoding: who guesses the next k tokens for the target to verify.

  - `PromptLookupProposer`: no model. Finds the latest earlier occurrence of the context's last
    n tokens and proposes what followed it (Saxena 2023, "prompt lookup decoding"). It pays off
    when the output copies its input: quoting, summarising, editing code.
  - `DraftModelProposer`: a smaller decoder with the same vocabulary samples k tokens one by one
    from its own cache. `layer_skip_draft` builds one from the target itself: its first blocks,
    then its final norm and LM head, sharing every weight (self-speculation by early exit, as in
    Draft & Verify, Zhang et al. 2023, and LayerSkip, Elhoushi et al. 2024, without their training).

A proposer gets every row's context (prompt + tokens so far) and a per-row limit, and returns at
most that many tokens per row, plus the distributions they were drawn from when they were sampled
(`acceptance.verify` needs q to stay exact; a deterministic proposer returns None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from ..models.decoder import Decoder
from .generate import left_pad
from .processors import seen_mask
from .sampling import SamplingConfig, process_logits


@dataclass
class Proposal:
    tokens: list[list[int]]  # per row, at most that row's limit
    probs: torch.Tensor | None  # (B, n, V) float32: q of each proposed token (n = longest row); None = point masses


class Proposer(Protocol):
    def reset(self, batch_size: int) -> None:
        """Forget everything: a new batch of prompts starts."""

    def propose(self, contexts: list[list[int]], limits: list[int], sampling: SamplingConfig,
                generator: torch.Generator | None) -> Proposal:
        """Up to limits[b] tokens to follow contexts[b]. Between calls a row's context grows by the
        accepted tokens and one more; a row with limit 0 needs nothing (it may be finished)."""


class PromptLookupProposer:
    """Propose the tokens that followed the latest earlier occurrence of the context's last n
    tokens, trying n = max_ngram first, down to min_ngram; nothing when no n-gram recurs."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"prompt lookup needs 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def reset(self, batch_size: int) -> None:
        pass

    def propose(self, contexts, limits, sampling=None, generator=None) -> Proposal:
        return Proposal([self.lookup(c, n) if n > 0 else [] for c, n in zip(contexts, limits)], None)

    def lookup(self, context: list[int], limit: int) -> list[int]:
        ids = torch.tensor(context, dtype=torch.long)
        for n in range(min(self.max_ngram, len(context) - 1), self.min_ngram - 1, -1):
            # every earlier window of n tokens (the last one is the suffix itself), so a match
            # always has at least one token after it
            windows = ids.unfold(0, n, 1)[:-1]
            hits = (windows == ids[-n:]).all(dim=1).nonzero()
            if len(hits):
                start = int(hits[-1]) + n
                return context[start:start + limit]
        return []


class DraftModelProposer:
    """Sample the proposals from a draft decoder that keeps its own cache across calls.

    Each call catches the draft up by rolling its cache back to two tokens before the end of the
    context and feeding those two. Two for every row, always: the rows then need no padding (which
    a Mamba conv state cannot absorb mid-sequence), and the rollback never reaches past where the
    previous call began keeping Mamba states. Draft steps of a row past its limit are masked like
    padding and rolled back at the next call.
    """

    def __init__(self, draft: nn.Module):
        self.draft = draft
        self.cache = None
        self.held: list[list[int]] = []  # per row, the tokens in the draft cache (-1: a masked step)
        self.kept_from: list[int] = []  # per row, how far back the cache can roll

    @property
    def vocab_size(self) -> int:
        return self.draft.config.vocab_size

    def reset(self, batch_size: int) -> None:
        self.cache, self.held, self.kept_from = None, [], []

    def propose(self, contexts, limits, sampling: SamplingConfig, generator=None) -> Proposal:
        if len(contexts) != len(limits):
            raise ValueError(f"{len(contexts)} contexts but {len(limits)} limits")
        if any(len(c) < 2 for c in contexts):
            raise ValueError("a draft model needs contexts of at least 2 tokens (prompt + one generated)")
        n = max(limits)
        if n == 0:
            return Proposal([[] for _ in contexts], None)
        with torch.inference_mode():
            return self._draft(contexts, limits, n, sampling, generator)

    def _draft(self, contexts, limits, n, sampling, generator) -> Proposal:
        logits = self._catch_up(contexts)  # (B, V): after each context
        device, vocab = logits.device, logits.shape[-1]
        seen = seen_mask(contexts, vocab, device) if sampling.repetition_penalty != 1.0 else None
        tokens, probs = [], []
        for i in range(n):
            processed = process_logits(logits.float(), sampling, seen)
            if sampling.greedy:
                chosen = processed.argmax(-1)
            else:
                q = processed.softmax(-1)
                chosen = torch.multinomial(q, 1, generator=generator)[:, 0]
                probs.append(q)
            tokens.append(chosen)
            if i + 1 == n:
                break
            active = [i + 1 < limit for limit in limits]
            mask = None if all(active) else torch.tensor(active, device=device)[:, None].long()
            logits = self.draft(chosen[:, None], self.cache, attention_mask=mask, last_only=True)[:, -1]
            for row, (token, on) in enumerate(zip(chosen.tolist(), active)):
                self.held[row].append(token if on else -1)
            if seen is not None:
                seen.scatter_(1, chosen[:, None], True)
        drafted = torch.stack(tokens, dim=1).tolist()
        return Proposal([d[:limit] for d, limit in zip(drafted, limits)],
                        torch.stack(probs, dim=1) if probs else None)

    def _catch_up(self, contexts: list[list[int]]) -> torch.Tensor:
        """Bring the draft cache to each context; return the draft's logits after it (B, V)."""
        starts = [len(c) - 2 for c in contexts]
        if self.cache is None or len(self.held) != len(contexts) or any(
                s < k or self.held[r][:s] != c[:s]
                for r, (s, k, c) in enumerate(zip(starts, self.kept_from, contexts))):
            # a new batch, or contexts that do not extend the last ones: start over
            self._prefill(contexts)
        else:
            self.cache.rollback([len(h) - s for h, s in zip(self.held, starts)])
        ids = torch.tensor([c[-2:] for c in contexts], device=self.draft.device)
        logits = self.draft(ids, self.cache, last_only=True)[:, -1]
        self.held, self.kept_from = [list(c) for c in contexts], starts
        return logits

    def _prefill(self, contexts: list[list[int]]) -> None:
        """A fresh cache holding all but the last two tokens of each context, keeping Mamba states
        from there on."""
        self.cache = self.draft.new_cache(len(contexts), kind="dynamic", window_only=False)
        heads = [c[:-2] for c in contexts]
        if max(len(h) for h in heads):
            ids, mask = left_pad(heads, self.draft.device)
            self.draft(ids, self.cache, attention_mask=mask, last_only=True)
        self.cache.keep_states()


def layer_skip_draft(model: Decoder, n_blocks: int) -> Decoder:
    """A Decoder made of `model`'s first n_blocks blocks, its final norm and its LM head. Shares
    every weight with `model` (nothing is copied), so it costs no memory but its own cache."""
    cfg = model.config
    if not 1 <= n_blocks < len(cfg.blocks):
        raise ValueError(f"a layer-skip draft keeps 1 to {len(cfg.blocks) - 1} of the model's "
                         f"{len(cfg.blocks)} blocks, not {n_blocks}")
    with torch.device("meta"):  # the structure only: every module is replaced by the model's own
        draft = Decoder(cfg.replace(layer_pattern=cfg.pattern[:n_blocks]))
    draft.embed, draft.pos_embed, draft.embed_dropout = model.embed, model.pos_embed, model.embed_dropout
    draft.blocks = nn.ModuleList(model.blocks[:n_blocks])
    draft.final_norm, draft.lm_head = model.final_norm, model.lm_head
    draft.rope_inv_freq, draft.alibi_slopes = model.rope_inv_freq, model.alibi_slopes
    return draft.eval()


SPEC_HELP = ("prompt-lookup[:MAX_NGRAM] (n-grams of the prompt and output, no draft model; default 3), "
             "draft:blocks:N (the target's own first N blocks with its final norm and head, sharing its "
             "weights) or draft:MODEL (a registry name, .gguf file or HF directory with the target's tokenizer)")


def check_spec(spec: str) -> tuple[str, str]:
    """Parse a command-line spec (see SPEC_HELP) without building anything, so a typo fails before
    a model loads. Returns ("prompt-lookup", max n-gram or ""), ("blocks", N) or ("model", MODEL)."""
    kind, _, arg = spec.partition(":")
    if kind == "prompt-lookup":
        if arg and not (arg.isdigit() and int(arg) >= 1):
            raise ValueError(f"prompt-lookup takes a maximum n-gram size >= 1, e.g. prompt-lookup:3, not {spec!r}")
        return kind, arg
    if kind == "draft" and arg:
        how, _, n = arg.partition(":")
        if how != "blocks":
            return "model", arg
        if not n.isdigit():
            raise ValueError(f"draft:blocks takes a number of blocks, e.g. draft:blocks:20, not {spec!r}")
        return "blocks", n
    raise ValueError(f"unknown speculative spec {spec!r}; use {SPEC_HELP}")


def make_proposer(spec: str, target: Decoder, load_draft: Callable[[str], nn.Module] | None = None) -> Proposer:
    """A proposer from a command-line spec (see SPEC_HELP). load_draft(name) -> a Decoder in eval
    mode, for draft:MODEL (the caller knows how to load checkpoints; generation/ does not)."""
    kind, arg = check_spec(spec)
    if kind == "prompt-lookup":
        return PromptLookupProposer(max_ngram=int(arg) if arg else 3)
    if kind == "blocks":
        if not isinstance(target, Decoder):
            raise ValueError("draft:blocks needs a plain Decoder target (not compiled, not seq2seq)")
        return DraftModelProposer(layer_skip_draft(target, int(arg)))
    if load_draft is None:
        raise ValueError(f"{spec!r} names a draft model, but no loader was given")
    return DraftModelProposer(load_draft(arg))
