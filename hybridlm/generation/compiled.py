"""An opt-in compiled decode step: the one-token forward over a static cache as one torch.compile graph.

Why: at batch 1 a decode step is a few hundred small ops, each paying Python and dispatch costs,
around GEMVs that only stream weights. Inductor fuses the small ops into a few C++ loops, and its
C++ GEMM template (`max_autotune`) streams the frozen weights faster than oneDNN's packed linears.
Prefill keeps running eager: it is one big forward per request, and its shapes change every call.
For it the wrapper keeps a second copy of the model with packed linears (2x faster prefill than
plain ones), which costs the weight bytes once more: `pack_prefill=False` saves that memory.

The eager `Decoder` is the reference: tests pin the compiled tokens and logits to it.
"""

from __future__ import annotations

import copy
import time

import torch

from ..cache import Cache, KVSlot
from ..models.decoder import Decoder
from ..nn.packed_linear import PackedLinear, pack_linears

# inductor options: weights frozen as constants so the GEMM template packs them once at compile
# time; "CPP,ATEN" lets autotuning fall back to aten's matmul where the template loses
COMPILE_OPTIONS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}


class CompiledDecoder:
    """A Decoder whose (B, 1) steps on a static cache run one compiled graph; all else runs eager.

    Offers what `generate` uses of a Decoder (`config`, `device`, `dtype`, `new_cache`, calling
    it), so `generate(compile_decoder(model), ...)` decodes through the graph. Its caches are
    static with `full_view`: every step attends over the whole buffer with empty slots masked, so
    the graph's shapes never change. The buffer length is marked dynamic, so prompts of other
    lengths reuse the same graph instead of compiling a new one.
    """

    def __init__(self, model: Decoder, options: dict | None = None, pack_prefill: bool = True):
        self.model = model
        self.eager = model  # runs prefill and anything else the graph is not for
        if pack_prefill:
            packed = copy.deepcopy(model)
            if pack_linears(packed, "auto"):
                self.eager = packed
        self.config = model.config
        self.options = COMPILE_OPTIONS if options is None else options
        self._step = torch.compile(model.forward_planned, fullgraph=True, dynamic=False)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def new_cache(self, batch_size: int, *, kind: str = "static", max_len: int | None = None, **kwargs) -> Cache:
        """A static, full-view cache of `max_len` slots (the only kind the graph is built for)."""
        if kind != "static":
            raise ValueError(f"a compiled decoder needs a static cache (cache_kind='static'), not {kind!r}")
        cache = self.model.new_cache(batch_size, kind="static", max_len=max_len, full_view=True, **kwargs)
        torch._dynamo.maybe_mark_dynamic(cache.key_pos, 1)
        for slot in cache.slots:
            if isinstance(slot, KVSlot):
                torch._dynamo.maybe_mark_dynamic(slot.k, 2)
                torch._dynamo.maybe_mark_dynamic(slot.v, 2)
        return cache

    def __call__(self, input_ids: torch.Tensor, cache: Cache | None = None,
                 attention_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Same contract as `Decoder.forward`. (B, 1) steps without a mask on a full-view cache run
        compiled (the first one compiles: tens of seconds); anything else runs the eager model."""
        if cache is None or not cache.full_view or input_ids.shape[1] != 1 or attention_mask is not None:
            return self.eager(input_ids, cache, attention_mask=attention_mask, last_only=last_only)
        step = cache.plan(1)
        torch._dynamo.maybe_mark_dynamic(step.k_pos, 1)  # a fresh view of cache.key_pos each step
        # options patched around the call, not passed as torch.compile(options=...): dynamo reads
        # `freezing` while tracing, before those apply (~30 us of a ~20 ms step); freezing also
        # needs grad off. last_only is left out: with one token it changes nothing, and as a
        # guard it would cost a second graph
        with torch._inductor.config.patch(self.options), torch.no_grad():
            # fresh standard strides: a (B, 1) view of a longer tensor has other strides (which
            # .contiguous() keeps, as size-1 dims do not count) and would fail a guard and recompile
            ids = torch.empty(input_ids.shape, dtype=input_ids.dtype, device=input_ids.device).copy_(input_ids)
            logits = self._step(ids, step, cache)
        cache.commit(step)
        return logits

    def warm_up(self) -> float:
        """Compile now (a two-step decode of a dummy 8-token prompt) rather than on the first
        request; returns the seconds it took. Later requests of any length reuse the graph."""
        start = time.perf_counter()
        with torch.inference_mode():
            cache = self.new_cache(1, max_len=16)
            ids = torch.zeros(1, 8, dtype=torch.long, device=self.device)
            self(ids, cache, last_only=True)
            for _ in range(2):
                self(ids[:, -1:], cache)
        return time.perf_counter() - start


def compile_decoder(model: Decoder, options: dict | None = None, pack_prefill: bool = True) -> CompiledDecoder:
    """Wrap `model` (eval mode, plain nn.Linear layers; attention, MLP and Mamba-2 blocks, not MoE)
    for compiled decoding; compiles on first use (or at `warm_up`).

    options: inductor options, default `COMPILE_OPTIONS`. pack_prefill: run prefill on a packed copy
    of the model (faster, one more copy of the weights) where packing is possible. The weights are
    frozen into the graph: changing them afterwards needs a new CompiledDecoder. Packed linears are
    refused, since they would keep oneDNN's kernels where the graph should use its own.
    """
    if any(isinstance(m, PackedLinear) for m in model.modules()):
        raise ValueError("compile_decoder needs plain nn.Linear layers: do not pack_linears the model")
    if model.training:
        raise ValueError("compile_decoder is for inference: call model.eval() first")
    if "moe" in model.config.blocks:
        raise ValueError("compile_decoder cannot compile MoE blocks (their token dispatch has data-dependent "
                         "shapes); decode this model without compiling")
    return CompiledDecoder(model, options, pack_prefill)
