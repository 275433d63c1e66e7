"""The engine: requests in, one scheduler step at a time, token and text deltas out.

Each `step()` asks the scheduler which sequences compute how many tokens, lays them out as one
flattened row of tokens in the paged cache, runs ONE forward of the unchanged model over it, and
samples the next token of every sequence whose tokens are all computed (a decode, or the last
chunk of a prompt). Batching the decodes of many sequences into one forward is what amortises
streaming the weights: at batch 1 a decode step reads every weight for one token.

Single-threaded: every call comes from one thread (the server wraps the engine in its own).
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Sequence

import torch

from ..generation.sampling import make_generator
from ..generation.stopping import tokens_before
from ..kernels import paged_attention as native
from ..tokenizer import Tokenizer
from ..kernels import triton_support
from .block_pool import BlockPool
from .capacity import Capacity, capacity, n_blocks_for, state_bytes_per_seq
from .config import ConfigError, EngineConfig
from .detokenizer import TextTracker
from .paged_cache import PagedCache, SeqWork
from .request import QueueFullError, Request, RequestOutput, RequestParams, StepOutput
from .sampler import sample
from .scheduler import Schedule, Scheduler
from .snapshots import SnapshotStore
from .speculative import Speculator


def _resolve_attention(config: EngineConfig, model) -> str:
    impl = config.attention
    cpu_f32 = model.device.type == "cpu" and model.dtype == torch.float32
    probe = torch.empty(0, device=model.device)
    if impl == "auto":
        d = model.config.head_dim
        triton_ok = triton_support.use_triton(probe) and d >= 16 and not d & (d - 1)
        impl = "native" if cpu_f32 else ("triton" if triton_ok else "gather")
    if impl == "triton" and not triton_support.runs_on(probe):
        raise ConfigError("the Triton paged attention runs on CUDA with the [triton] extra; use attention='gather'")
    if impl == "native":
        if not cpu_f32:
            raise ConfigError("the native paged attention op runs float32 on the CPU; use attention='gather'")
        native.load()  # builds on first use; KernelUnavailable says why (then pass attention='gather')
    return impl


class Engine:
    def __init__(self, model, tokenizer: Tokenizer | None = None, config: EngineConfig | None = None):
        config = config or EngineConfig()
        cfg = model.config
        if getattr(model, "training", False):
            raise ValueError("the engine needs the model in eval mode (model.eval())")
        if cfg.position == "alibi":
            raise ConfigError("the engine's paged attention does not apply ALiBi biases; ALiBi models are not served")
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.hybrid = "mamba" in cfg.blocks
        dtype, device = model.dtype, model.device
        self.n_blocks = n_blocks_for(cfg, config, dtype)
        if self.n_blocks < 1:
            raise ConfigError(f"kv_memory {config.kv_memory} B holds no block of {config.block_size} tokens")
        per_state = state_bytes_per_seq(cfg, dtype)
        n_snap = config.mamba_state_memory // per_state if self.hybrid and config.enable_prefix_caching else 0
        self.attention = _resolve_attention(config, model)
        self.pool = BlockPool(self.n_blocks, config.enable_prefix_caching)
        self.cache = PagedCache(cfg, self.n_blocks, config.block_size, config.max_num_seqs + n_snap,
                                attention=self.attention, dtype=dtype, device=device)
        snapshots = None
        if self.hybrid and config.enable_prefix_caching:
            snapshots = SnapshotStore(list(range(config.max_num_seqs, config.max_num_seqs + n_snap)), self.pool,
                                      config.block_size)
        self.snapshots = snapshots
        self.scheduler = Scheduler(config, self.pool, hybrid=self.hybrid, snapshots=snapshots)
        self.speculator = Speculator(config, model, self.hybrid) if config.speculative else None
        self.requests: dict[str, Request] = {}
        if tokenizer is not None and tokenizer.eos_token_ids:
            self.default_eos = frozenset(tokenizer.eos_token_ids)
        else:
            self.default_eos = frozenset() if cfg.eos_token_id is None else frozenset((cfg.eos_token_id,))
        self._counter = itertools.count()
        self.totals = dict(prompt_tokens=0, generation_tokens=0, computed_tokens=0, requests_finished=0,
                           requests_aborted=0, errors=0, steps=0)

    # -- requests ---------------------------------------------------------------------------------
    def add_request(self, prompt_ids: Sequence[int], params: RequestParams, request_id: str | None = None,
                    snapshot_at: Sequence[int] = ()) -> str:
        """Queue a request; returns its id. ValueError for a request that can never run (bad ids,
        too long for the context or the KV pool), QueueFullError when max_queue are waiting.

        snapshot_at: prompt lengths where a hybrid keeps its Mamba state for later requests (the end
        of the system prompt, of each chat turn); ignored for models without Mamba layers.
        """
        if not isinstance(params, RequestParams):
            raise TypeError(f"params must be a RequestParams, got {type(params).__name__}")
        prompt = [int(t) for t in prompt_ids]
        self._check(prompt, params, request_id, snapshot_at)
        if len(self.scheduler.waiting) >= self.config.max_queue:
            raise QueueFullError(f"{len(self.scheduler.waiting)} requests are waiting (max_queue "
                                 f"{self.config.max_queue}); try again later")
        rid = request_id if request_id is not None else f"req-{next(self._counter)}-{uuid.uuid4().hex[:8]}"
        eos = frozenset() if params.ignore_eos else (
            self.default_eos if params.eos_token_ids is None else frozenset(params.eos_token_ids))
        req = Request(rid, len(prompt), params, prompt, time.monotonic(),
                      snapshot_at=tuple(sorted(set(snapshot_at))) if self.hybrid else (),
                      eos=eos | frozenset(params.stop_token_ids), sampling=params.sampling())
        if not params.greedy:
            req.generator = make_generator(params.seed, self.model.device)
        if self.tokenizer is not None:
            req.text = TextTracker(self.tokenizer, params.stop, params.skip_special_tokens)
        if params.logprobs:
            req.logprobs = []
        self.requests[rid] = req
        self.scheduler.add(req)
        return rid

    def _check(self, prompt: list[int], params: RequestParams, request_id, snapshot_at) -> None:
        cfg = self.model.config
        if not prompt:
            raise ValueError("the prompt is empty; it needs at least one token")
        if min(prompt) < 0 or max(prompt) >= cfg.vocab_size:
            raise ValueError(f"the prompt has token ids outside [0, {cfg.vocab_size})")
        if len(prompt) + params.max_tokens > cfg.max_seq_len:
            raise ValueError(f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                             f"model's context of {cfg.max_seq_len} tokens")
        blocks = -(-(len(prompt) + params.max_tokens) // self.config.block_size)
        if blocks > self.n_blocks:
            raise ValueError(f"prompt + max_tokens needs {blocks} KV blocks; the pool has {self.n_blocks} "
                             f"(raise kv_memory)")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need an engine with a tokenizer")
        if request_id is not None and request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        if any(not isinstance(p, int) or isinstance(p, bool) or not 0 < p <= len(prompt) for p in snapshot_at):
            raise ValueError(f"snapshot_at must be prompt lengths in [1, {len(prompt)}], got {tuple(snapshot_at)}")

    def abort(self, request_id: str) -> None:
        """Stop a request and release its blocks now. Unknown or finished ids are ignored."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return
        self.scheduler.finish(req, keep_state=False)
        self.totals["requests_aborted"] += 1

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix not in use: free blocks lose their hashes, snapshots are dropped
        (benchmarks call this between runs; running requests are untouched)."""
        if self.snapshots is not None:
            for key in list(self.snapshots.entries):
                self.snapshots.drop(key)
        self.pool.reset_cache()

    def has_unfinished(self) -> bool:
        return self.scheduler.n_unfinished > 0

    # -- the step ---------------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """Run one scheduler step; an output for every request that got tokens or finished."""
        spec = self.speculator  # drafts are tokens to compute, verified after the forward (speculative.py)
        if spec is not None:
            spec.propose(self.scheduler.running, self.pool.n_free)
        schedule = self.scheduler.schedule()
        if spec is not None:
            spec.trim(schedule.work)
        self._apply_copies(schedule)
        if not schedule.work:
            if self.scheduler.waiting and not self.scheduler.running:  # nothing runs and nothing can start
                req = self.scheduler.waiting[0]
                return [self._fail(req, f"cannot be scheduled: needs more KV blocks than are free "
                                        f"({self.pool.n_free} of {self.pool.n_blocks})")]
            return []
        self.totals["steps"] += 1
        decodes = [(r, n) for r, n in schedule.work if n == 1]
        chunks = [(r, n) for r, n in schedule.work if n > 1]
        ordered = decodes + chunks
        tokens, columns, sampled, sampled_rows, verifying = [], [], [], [], []
        for req, n in ordered:
            tokens += req.tokens[req.num_computed:req.num_computed + n]
            if spec is not None and spec.verifying(req):  # logits at each of its positions
                verifying.append((req, len(columns), n))
                columns += range(len(tokens) - n, len(tokens))
            elif req.num_computed + n == len(req.tokens):
                sampled_rows.append(len(columns))
                columns.append(len(tokens) - 1)
                sampled.append(req)
        work = [SeqWork(r.num_computed, n, r.blocks, r.state_slot) for r, n in ordered]
        ids = self.cache.prepare(work[:len(decodes)], work[len(decodes):], tokens, columns)
        if spec is not None:
            spec.keep_states(self.cache.keeping)
        try:
            with torch.inference_mode():
                logits = self.model(ids, self.cache)[0].float()  # (K, V)
        except Exception as err:  # the step's requests fail alone; the engine keeps serving the rest
            return [self._fail(req, f"forward failed: {err!r}") for req, _ in ordered]
        finally:
            self.cache.commit(None)
        for req, n in ordered:
            if not (verifying and spec.verifying(req)):  # a verified sequence counts only what it keeps
                self._copy_states(self.scheduler.computed(req, n))
            self.totals["computed_tokens"] += n
        outputs = []
        if sampled:
            chosen, entries = sample(sampled, logits[sampled_rows] if verifying else logits)
            for req, token, entry in zip(sampled, chosen, entries):
                outputs.append(self._accept(req, token, entry))
        for req, first, n in verifying:
            outputs.append(spec.finish(self, req, logits[first:first + n]))
        return outputs

    def _apply_copies(self, schedule: Schedule) -> None:
        for src, dst, n in schedule.block_copies:
            self.cache.copy_block(src, dst, n)
        for row, src in schedule.state_inits:
            if src is None:
                self.cache.zero_state(row)
            else:
                self.cache.copy_state(src, row)

    def _copy_states(self, copies) -> None:
        for src, dst in copies:
            self.cache.copy_state(src, dst)

    def _accept(self, req: Request, token: int, entry) -> StepOutput:
        """Give req its sampled token; decide whether it finished; build its output."""
        req.completion_tokens += 1
        self.totals["generation_tokens"] += 1
        if req.completion_tokens == 1:
            self.totals["prompt_tokens"] += req.prompt_len
        new_ids, new_logprobs = [], None
        if token < 0:
            return self._fail(req, "the logits were not finite; nothing could be sampled")
        if token in req.eos:
            req.finish_reason = "stop"
            req.stop_reason = token if token in req.params.stop_token_ids else None
        else:
            req.tokens.append(token)
            new_ids = [token]
            if req.logprobs is not None:
                req.logprobs.append(entry)
                new_logprobs = [entry]
            stop = req.text.add(token) if req.text is not None else None
            if stop is not None:
                req.finish_reason, req.stop_reason = "stop", stop
            elif req.n_output >= req.params.max_tokens:
                req.finish_reason = "length"
        finished = req.finish_reason is not None
        delta = ""
        if req.text is not None:
            if finished and not isinstance(req.stop_reason, str):  # the decoder may hold a last character
                stop = req.text.finish()
                if stop is not None:
                    req.finish_reason, req.stop_reason = "stop", stop
            delta = req.text.delta(final=finished)
        if finished:
            self._copy_states(self.scheduler.finish(req))
            self.requests.pop(req.request_id, None)
            self.totals["requests_finished"] += 1
        return self._output(req, new_ids, delta, new_logprobs)

    def _output(self, req: Request, new_ids, delta, new_logprobs) -> StepOutput:
        return StepOutput(req.request_id, new_ids, delta, new_logprobs, req.finished, req.finish_reason,
                          req.stop_reason, req.prompt_len, req.cached_tokens or 0, req.completion_tokens,
                          req.first_scheduled, req.error)

    def _fail(self, req: Request, message: str) -> StepOutput:
        req.finish_reason, req.error = "error", message
        self.totals["errors"] += 1
        if not req.finished:
            self.scheduler.finish(req, keep_state=False)
        self.requests.pop(req.request_id, None)
        return self._output(req, [], "", None)

    # -- offline use ------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], params: RequestParams | Sequence[RequestParams],
                 snapshot_at: Sequence[Sequence[int]] | None = None) -> list[RequestOutput]:
        """Run prompts to completion (continuous batching over all of them); outputs in prompt order."""
        plist = [params] * len(prompts) if isinstance(params, RequestParams) else list(params)
        if len(plist) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(plist)} params")
        points = snapshot_at or [()] * len(prompts)
        pending = list(range(len(prompts)))[::-1]
        reqs: list[Request | None] = [None] * len(prompts)
        while pending or self.has_unfinished():
            while pending and len(self.scheduler.waiting) < self.config.max_queue:
                i = pending.pop()
                reqs[i] = self.requests[self.add_request(prompts[i], plist[i], snapshot_at=points[i])]
            self.step()
        return [self._result(req) for req in reqs]

    def _result(self, req: Request) -> RequestOutput:
        text, out = "", req.output_ids
        if req.text is not None:
            text = req.text.text
            if isinstance(req.stop_reason, str):
                skip = req.params.skip_special_tokens
                out = tokens_before(out, lambda t: self.tokenizer.decode(t, skip_special_tokens=skip), len(text))
        return RequestOutput(req.request_id, req.tokens[:req.prompt_len], out, text, req.finish_reason,
                             req.stop_reason, req.logprobs, req.prompt_len, req.cached_tokens or 0,
                             req.completion_tokens)

    # -- reporting --------------------------------------------------------------------------------
    def metrics(self) -> dict:
        """Counters and gauges for /metrics (plain data; safe to copy to another thread)."""
        s, pool = self.scheduler.stats, self.pool
        snaps = self.snapshots
        return {
            "num_running": len(self.scheduler.running), "num_waiting": len(self.scheduler.waiting),
            "kv_blocks_used": pool.n_used, "kv_blocks_total": pool.n_blocks, "kv_blocks_cached": pool.n_cached,
            "kv_block_evictions": pool.evictions,
            "prefix_cache_queries": s.prefix_queries, "prefix_cache_hits": s.prefix_hits,
            "mamba_snapshot_hits": s.snapshot_hits, "mamba_snapshot_hit_tokens": s.snapshot_hit_tokens,
            "mamba_snapshot_misses": dict(s.snapshot_misses), "mamba_snapshots_saved": s.snapshots_saved,
            "mamba_snapshots": len(snaps) if snaps is not None else 0, "mamba_snapshot_capacity": snaps.n_rows if snaps is not None else 0,
            "mamba_snapshot_evictions": snaps.evictions if snaps is not None else 0,
            "preemptions": s.preemptions, "prompt_tokens_total": self.totals["prompt_tokens"],
            "generation_tokens_total": self.totals["generation_tokens"],
            "computed_tokens_total": self.totals["computed_tokens"],
            "requests_finished": self.totals["requests_finished"], "requests_aborted": self.totals["requests_aborted"],
            "errors": self.totals["errors"], "steps": self.totals["steps"], "attention": self.attention,
            **(self.speculator.metrics() if self.speculator is not None else {}),
        }

    def capacity(self, seq_len: int) -> Capacity:
        """How many tokens and concurrent sequences of seq_len tokens fit (`.describe()` prints it)."""
        rows = self.snapshots.n_rows if self.snapshots is not None else 0
        return capacity(self.model.config, self.config, self.model.dtype, self.n_blocks, rows, seq_len)
