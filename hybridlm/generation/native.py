"""Native decoding: a Decoder whose batch-1 one-token steps run as one C++ call (kernels/decode_step).

Why: a quantized SmolLM2 token is ~120 small matmuls of a few microseconds each, and the eager
forward spends about as long again around them in Python and small ATen ops. The native step runs
the token's every block, the final norm and the LM head in one call on the same kernels and the
same cache tensors, so the eager Decoder stays its reference (tests pin the logits together).
Prefill, batches, padding and every cache the step does not cover run the eager model unchanged.
"""

from __future__ import annotations

import torch

from ..cache import Cache, KVSlot
from ..kernels import decode_step
from ..models.decoder import Decoder


class NativeDecoder:
    """Offers what `generate` uses of a Decoder (`config`, `device`, `dtype`, `new_cache`, calling
    it); (1, 1) steps on a plain cache (K/V in float32, or float16 under kv_dtype "float16") without
    padding run the native step."""

    def __init__(self, model: Decoder):
        self.model = model
        self.config = model.config
        self.plan = decode_step.build_plan(model)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def new_cache(self, batch_size: int, **kwargs) -> Cache:
        return self.model.new_cache(batch_size, **kwargs)

    def covers(self, input_ids: torch.Tensor, cache: Cache | None, attention_mask: torch.Tensor | None) -> bool:
        """Whether this call runs the native step (else the eager model)."""
        return (input_ids.shape == (1, 1) and attention_mask is None and type(cache) is Cache
                and cache.kv_dtype in ("float", "float16") and cache.dtype == torch.float32 and not cache.full_view
                and not cache.window_ring and not cache.has_padding and cache.attend_for is None
                and all(type(s) is KVSlot for s in cache.slots if s is not None))

    def __call__(self, input_ids: torch.Tensor, cache: Cache | None = None,
                 attention_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Same contract as `Decoder.forward`."""
        if not self.covers(input_ids, cache, attention_mask):
            return self.model(input_ids, cache, attention_mask=attention_mask, last_only=last_only)
        pos = cache.length  # no padding: the slot index is the position
        step = cache.plan(1)
        slots = [s for s in cache.slots if s is not None]
        for slot in slots:
            slot.reserve(pos + 1)
        logits = self.plan.step(int(input_ids[0, 0]), pos, [s.k for s in slots], [s.v for s in slots])
        cache.commit(step)
        return logits.view(1, 1, -1)

