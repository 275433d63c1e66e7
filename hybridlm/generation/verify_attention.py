"""Attention for a verification forward, computed as the one-token decode steps it stands for.

A target verifying k drafts runs k + 1 tokens in one forward, which should compute what k + 1
one-token steps compute. In a GGUF model kept quantized (SmolLM2 Q4_1 on the CPU) every layer but
attention does so bit for bit: the native quantized matmuls, norms and RoPE treat each token row
alone (measured). Attention does not: one call over k + 1 queries with a causal mask reduces in
another order than k + 1 calls of one query, ~1e-7 relative apart. Int8 activations (QuantLinear's
"fast" mode, the CLI's default) turn such a difference into another int8 code now and then, and it
grows layer by layer: SmolLM2's logits ended 0.6-1.2 apart (5 tokens after a 60-token prompt),
enough to flip near-tie greedy tokens; greedy speculation then left plain greedy decoding within
48 tokens on 5 of 6 pydoc quoting prompts.

`decode_attention` attends query i of a forward of T tokens exactly as step i would have: over the
first (length + i + 1) keys, with no mask where that step would have had none, through the same
attention function. At batch 1 a quantized SmolLM2 then verifies bit-identically to T one-token
steps, so greedy speculation gives exactly the plain greedy tokens. (Float linears may still round
a T-row GEMM differently from T one-row products, BLAS choosing kernels by shape: ~1e-6, which
float activations do not amplify.) The price is T attention calls per layer instead of one. The
engine's paged attention already runs short chunks as decode queries (engine/paged_attention.py).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..cache import Cache, CacheStep
from ..config import ModelConfig
from ..nn.attention import ATTENTION_IMPLS, allowed_keys

VERIFY_ATTENTION = ("decode", "batched")


def decode_attention(cfg: ModelConfig, cache: Cache, step: CacheStep) -> Callable | None:
    """For `Cache.attend_for` (bind cfg first): the attend function of a planned step that makes
    each query a one-token step; None (the layers' own path) for one-token steps, ALiBi models
    (their bias is the mask) and caches whose keys a step does not simply append to."""
    if step.n_new == 1 or cfg.position == "alibi" or cache.window_ring or cache.full_view:
        return None
    base = ATTENTION_IMPLS[cfg.attn_impl]
    start, t, window = cache.length, step.n_new, cfg.sliding_window
    allowed = allowed_keys(step.q_pos, step.k_pos, window)  # (B, 1, T, S): what a one-token step would mask with
    padded = cache.has_padding

    def attend(q, k, v, mask=None, is_causal=False, dropout_p=0.0):
        # q (B, H, T, D); k, v (B, H_kv, start + T, D): the slot after appending the T tokens
        outs = []
        for i in range(t):
            n = start + i + 1  # the keys step i saw: its cache then, plus its own token
            # the plan of step i: trivial (no mask) unless padding or a sliding window cut in
            trivial = not padded and (window is None or n <= window)
            outs.append(base(q[:, :, i:i + 1], k[:, :, :n], v[:, :, :n],
                             None if trivial else allowed[:, :, i:i + 1, :n], False, dropout_p))
        return torch.cat(outs, dim=2)

    return attend
