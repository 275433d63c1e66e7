"""KV-cache quantization: K and V stored as int8 per head and token, with one float32 scale each.

A KV slot of a float32 model holds 2 x H_kv x D x 4 bytes per token and layer; at long contexts
and large batches that, not the weights, fills memory. Int8 storage with a symmetric absmax
scale per (row, head, token),

    k_q = round(k / s),  s = max_d |k[..., d]| / 127        k ~ k_q * s

keeps 2 x H_kv x (D + 4) bytes: for SmolLM2's D = 64, 136 instead of 512, 26.6% of float32 and
53% of bfloat16. A scale per token (not per channel, as KIVI does for K) means a new token is
quantized once, when it arrives, and nothing already stored is ever requantized; the price is
that a key channel with outliers coarsens the other channels of that token.

The slot keeps the int8 tensors and dequantizes what the layer attends over at every step, into
the cache's float dtype (attention math unchanged; a fused int8 attention kernel would read the
int8 directly, and that is where the bandwidth saving would also become speed). The token being
appended is quantized before it is attended over too, so prefill and decode see the same K/V
and cached decode stays equal to a cached prefill of the same tokens.
"""

from __future__ import annotations

import torch

from .cache import KVSlot

KV_DTYPES = ("float", "float16", "int8")  # float: the cache's dtype (the model's); float16: KVSlot; int8: here
QMAX = 127
SCALE_DTYPE = torch.float32


def quantize_kv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, H_kv, T, D) float -> (codes int8 (B, H_kv, T, D), scales float32 (B, H_kv, T, 1)).
    A token whose K (or V) is all zero gets scale 0 and codes 0, and dequantizes to exact zeros."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True) / QMAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(xf / safe).clamp(-QMAX, QMAX).to(torch.int8), scale.to(SCALE_DTYPE)


def dequantize_kv(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes int8 (..., D) x scales (..., 1) -> dtype (..., D)."""
    return (codes.float() * scales.float()).to(dtype)


def kv_bytes_per_element(kv_dtype: str, float_bytes: int, head_dim: int) -> float:
    """Bytes one K (or V) element costs in storage, scales included: what analysis/memory.py uses."""
    if kv_dtype == "float":
        return float(float_bytes)
    if kv_dtype == "float16":
        return 2.0
    if kv_dtype == "int8":
        return 1 + torch.empty((), dtype=SCALE_DTYPE).element_size() / head_dim
    raise ValueError(f"KV cache dtype must be one of {KV_DTYPES}, not {kv_dtype!r}")


class Int8KVSlot(KVSlot):
    """A KVSlot whose k, v are int8 (B, H_kv, S, D) with k_scale, v_scale float32 (B, H_kv, S, 1).

    Same interface and the same three storage strategies (static full view, dynamic by doubling,
    sliding-window ring) as KVSlot; `update` returns float K/V dequantized in the cache's dtype.
    """

    def __init__(self, cache, capacity: int):
        self.cache = cache
        shape = (cache.batch_size, cache.n_kv_heads, capacity, cache.head_dim)
        self.k = torch.zeros(shape, dtype=torch.int8, device=cache.device)
        self.v = torch.zeros(shape, dtype=torch.int8, device=cache.device)
        self.k_scale = torch.zeros(shape[:3] + (1,), dtype=SCALE_DTYPE, device=cache.device)
        self.v_scale = torch.zeros(shape[:3] + (1,), dtype=SCALE_DTYPE, device=cache.device)

    def _dequantized(self, end: int | None = None):
        k, v, ks, vs = self.k, self.v, self.k_scale, self.v_scale
        if end is not None:
            k, v, ks, vs = k[:, :, :end], v[:, :, :end], ks[:, :, :end], vs[:, :, :end]
        dtype = self.cache.dtype
        return dequantize_kv(k, ks, dtype), dequantize_kv(v, vs, dtype)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize and append k, v (B, H_kv, T, D); return everything to attend over, dequantized."""
        kq, ks = quantize_kv(k)
        vq, vs = quantize_kv(v)
        if self.cache.full_view:
            idx = self.cache.write_index
            for buf, new in ((self.k, kq), (self.v, vq), (self.k_scale, ks), (self.v_scale, vs)):
                buf.index_copy_(2, idx, new)
            return self._dequantized()
        start, t = self.cache.length, k.shape[2]
        if self.cache.window_ring:
            return self._update_ring_q(kq, ks, vq, vs, start)
        if start + t > self.k.shape[2]:
            self._grow(start + t)
        for buf, new in ((self.k, kq), (self.v, vq), (self.k_scale, ks), (self.v_scale, vs)):
            buf[:, :, start:start + t] = new
        return self._dequantized(start + t)

    def _update_ring_q(self, kq, ks, vq, vs, start):
        # attend over the ring as it was plus the new tokens, then write the newest into the ring
        dtype = self.cache.dtype
        old_k, old_v = self._dequantized()
        k_all = torch.cat((old_k, dequantize_kv(kq, ks, dtype)), dim=2)
        v_all = torch.cat((old_v, dequantize_kv(vq, vs, dtype)), dim=2)
        capacity = self.k.shape[2]
        if capacity:
            keep = min(kq.shape[2], capacity)
            idx = self.cache.ring_index(start, kq.shape[2])
            for buf, new in ((self.k, kq), (self.v, vq), (self.k_scale, ks), (self.v_scale, vs)):
                buf.index_copy_(2, idx, new[:, :, -keep:])
        return k_all, v_all

    def _grow(self, needed: int) -> None:
        super()._grow(needed)  # k and v (raises for a static cache)
        capacity = self.k.shape[2]
        for name in ("k_scale", "v_scale"):
            old = getattr(self, name)
            new = old.new_zeros(old.shape[:2] + (capacity, 1))
            new[:, :, : old.shape[2]] = old
            setattr(self, name, new)

    def reorder(self, rows: torch.Tensor) -> None:
        super().reorder(rows)
        self.k_scale, self.v_scale = self.k_scale.index_select(0, rows), self.v_scale.index_select(0, rows)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.k_scale, self.v_scale))
