"""Speculative decoding inside the engine: prompt-lookup drafts, verified within the ordinary step.

As vLLM v1 sees it, draft tokens are just more tokens to compute. Before the scheduler runs, every
decoding sequence (one token left to compute) that can speculate gets up to k prompt-lookup
drafts appended to its tokens, so the scheduler gives it 1 + n tokens like a prefill chunk, within
the same token budget and block allocation as everything else. After scheduling, drafts that did
not fit (budget, preemption) are cut off again. The forward returns the logits at each of the
sequence's 1 + n positions; `generation.acceptance.verify` keeps a prefix of the drafts by the
rejection-sampling rule and picks one more token, exactly as `speculative_generate` does.

Rolling back what was rejected:
  - KV: rows past the computed tokens are dead (the next tokens overwrite them); blocks holding
    no computed token go back to the pool at once. Only verified tokens are ever registered with
    the prefix cache: `Scheduler.computed` is called after verification, one token at a time.
  - Mamba (hybrids): the sequence's state row runs its 1 + n tokens keeping the state after each
    (`PagedCache.keeping`, the same per-token states as `Cache.keep_states`); before each token is
    emitted the row is set to the state after the tokens computed so far, so the row, and a
    snapshot taken if the request finishes there, always hold exactly the computed tokens.

Not speculated (decoded plainly, as before): requests with presence, frequency or repetition
penalties or with logprobs, whose per-token bookkeeping the verification does not reproduce yet.
A draft model is not offered here: it would need its own paged cache and scheduling.
"""

from __future__ import annotations

import dataclasses

import torch

from ..cache import MambaSlot
from ..generation.acceptance import verify
from ..generation.proposers import PromptLookupProposer, make_proposer
from .config import ConfigError, EngineConfig
from .request import RUNNING, Request, StepOutput


class KeptRows(MambaSlot):
    """What `Mamba2.forward` runs on for a verifying sequence: views of its state row (written in
    place) that also keep the state after every token (MambaSlot's keep/restore)."""

    def __init__(self, conv: torch.Tensor, ssm: torch.Tensor):
        self.conv, self.ssm = conv, ssm
        self.kept_conv = self.kept_ssm = None
        self.checkpoint()


class KeptStates:
    """One verifying sequence's kept rows, one per Mamba layer (paged_cache.py asks `rows_for`)."""

    def __init__(self):
        self.layers: list[KeptRows] = []

    def rows_for(self, rows) -> KeptRows:
        kept = KeptRows(rows.conv, rows.ssm)
        self.layers.append(kept)
        return kept

    def restore(self, n_tokens: int) -> None:
        """Every layer's row back to its state after the first n_tokens of the verified ones."""
        at = torch.tensor([n_tokens])
        for kept in self.layers:
            kept.restore(at)


class Speculator:
    """The engine's speculation: proposes before scheduling, verifies after the forward."""

    def __init__(self, config: EngineConfig, model, hybrid: bool):
        kind = config.speculative.partition(":")[0]
        if kind != "prompt-lookup":
            raise ConfigError(f"the engine speculates with prompt-lookup[:MAX_NGRAM] only, not "
                              f"{config.speculative!r} (a draft model would need its own paged cache)")
        self.proposer: PromptLookupProposer = make_proposer(config.speculative, model)
        self.k, self.hybrid = config.num_speculative_tokens, hybrid
        self.budget, self.block_size = config.max_num_batched_tokens, config.block_size
        self.max_seq_len = model.config.max_seq_len
        self.drafts: dict[str, tuple[Request, list[int]]] = {}  # request id -> (request, drafts in its tokens)
        self.keeping: dict[int, KeptStates] = {}  # Mamba state row -> its kept states this step
        self.proposed = self.accepted = self.verifications = 0

    @staticmethod
    def eligible(req: Request) -> bool:
        return not req.params.penalised and not req.params.logprobs

    # -- before the forward -----------------------------------------------------------------------
    def propose(self, running: list[Request], n_free_blocks: int) -> None:
        """Append drafts to decoding sequences. Drafts never take the token a later sequence's
        decode needs from the budget, nor the blocks it may need to grow."""
        room = self.budget - len(running)
        spare = n_free_blocks - len(running)
        for req in running:
            if room <= 0:
                break
            if req.num_computed != len(req.tokens) - 1 or not self.eligible(req):
                continue
            # a round yields up to limit + 1 tokens, within max_tokens and the context
            limit = min(self.k, room, req.params.max_tokens - req.n_output - 1,
                        self.max_seq_len - len(req.tokens) - 1)
            drafts = self.proposer.lookup(req.tokens, limit) if limit > 0 else []
            if not drafts:
                continue
            blocks = -(-(len(req.tokens) + len(drafts)) // self.block_size) - len(req.blocks)
            if blocks > spare:
                continue
            spare -= max(0, blocks)
            room -= len(drafts)
            req.tokens += drafts
            self.drafts[req.request_id] = (req, drafts)

    def trim(self, work: list[tuple[Request, int]]) -> None:
        """After scheduling: keep only the drafts each sequence was given tokens for."""
        given = {req.request_id: n for req, n in work}
        for rid, (req, drafts) in list(self.drafts.items()):
            keep = max(0, given.get(rid, 0) - 1) if req.status == RUNNING else 0
            if keep < len(drafts):
                del req.tokens[len(req.tokens) - len(drafts) + keep:]
                drafts = drafts[:keep]
            if drafts:
                self.drafts[rid] = (req, drafts)
            else:
                del self.drafts[rid]

    def verifying(self, req: Request) -> bool:
        return req.request_id in self.drafts

    def keep_states(self, keeping: dict) -> None:
        """Have the paged cache keep per-token Mamba states of every verifying sequence this step."""
        keeping.clear()
        if self.hybrid:
            for req, _ in self.drafts.values():
                keeping[req.state_slot] = KeptStates()
        self.keeping = keeping

    # -- after the forward ------------------------------------------------------------------------
    def finish(self, engine, req: Request, logits: torch.Tensor) -> StepOutput:
        """Verify req's drafts against its logits (1 + n, V); emit the accepted tokens and one more
        through the engine's own `_accept`; give back what the rejected ones took."""
        _, drafts = self.drafts.pop(req.request_id)
        kept = self.keeping.pop(req.state_slot, None)
        n = len(drafts)
        try:
            accepted, following = verify(logits[None], torch.tensor([drafts], device=logits.device),
                                         torch.tensor([n]), req.sampling, None, req.generator)
        except RuntimeError as err:  # torch.multinomial refuses probabilities that are not finite
            return engine._fail(req, f"nothing could be sampled: {err}")
        a = int(accepted[0])
        self.verifications += 1
        self.proposed += n
        self.accepted += a
        del req.tokens[len(req.tokens) - n:]  # now ends with the token this step computed first
        engine._copy_states(engine.scheduler.computed(req, 1))
        outs = []
        for i, token in enumerate(drafts[:a] + [int(following[0])]):
            if kept is not None:
                kept.restore(1 + i)  # the row holds the computed tokens, no more
            outs.append(engine._accept(req, token, None))
            if req.finished or i == a:
                break
            engine._copy_states(engine.scheduler.computed(req, 1))  # the accepted draft's KV is in place
        if not req.finished:
            keep = -(-req.num_computed // self.block_size)
            engine.pool.release(req.blocks[keep:])
            del req.blocks[keep:]
        last = outs[-1]
        return dataclasses.replace(last, new_token_ids=[t for o in outs for t in o.new_token_ids],
                                   text_delta="".join(o.text_delta for o in outs))

    def metrics(self) -> dict:
        return {"spec_verifications": self.verifications, "spec_draft_tokens": self.proposed,
                "spec_accepted_tokens": self.accepted,
                "spec_acceptance_rate": self.accepted / self.proposed if self.proposed else 0.0}
