"""`QuantizeConfig`: what to quantize and how; one dataclass for every method, defaults per method."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

GRANULARITIES = ("channel", "tensor")  # besides an integer group size


class CompressError(ValueError):
    """A quantization request that cannot be carried out; the message is one line a user can act on."""


@dataclass
class QuantizeConfig:
    """How `quantize_model` rewrites a model. None fields take the method's default (registry.py)."""

    method: str = "rtn"  # a name in compress.registry.METHODS
    bits: int | None = None  # 4 or 8; None: the method's default
    group_size: int | str | None = None  # inputs per scale, or "channel" (one per row) / "tensor"
    symmetric: bool | None = None  # uniform grids; None: asymmetric for 4 bits, symmetric for 8
    act_order: bool = False  # GPTQ: columns in decreasing diag(H) order (static groups, see gptq.py)
    damp: float = 0.01  # GPTQ: fraction of the mean of diag(H) added to its diagonal
    block_size: int = 128  # GPTQ: columns per lazy-batch update
    gptq_clip: bool = True  # GPTQ: shrink each group's range by AWQ's clip search (H-weighted)
    awq_grid: int = 20  # AWQ: alpha values tried in [0, 1)
    awq_clip: bool = True  # AWQ: also search a clipping ratio per row and group
    awq_duo: bool = True  # AWQ: also try s = x^a / w^(1-a) ("duo scaling", awq.py)
    fp8_format: str = "e4m3"  # fp8: "e4m3" (e4m3fn, max 448) or "e5m2" (max 57344)
    kmeans_per: str = "row"  # kmeans: a 16-entry table per "row" or one per "tensor"
    kmeans_iters: int = 25  # kmeans: Lloyd iterations
    include_head: bool = False  # also quantize lm_head (a tied embedding lookup stays float)
    options: dict[str, Any] = field(default_factory=dict)  # extras for methods registered elsewhere

    def replace(self, **changes) -> "QuantizeConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantizeConfig":
        return cls(**data)


def parse_group_size(value: str | int) -> int | str:
    """CLI text -> an int group size or one of GRANULARITIES."""
    if isinstance(value, int) or value in GRANULARITIES:
        return value
    try:
        size = int(value)
    except ValueError:
        raise CompressError(f"--group-size must be a positive integer, 'channel' or 'tensor', not {value!r}") from None
    if size <= 0:
        raise CompressError(f"--group-size must be positive, not {size}")
    return size


def group_size_for(cfg: QuantizeConfig, in_features: int) -> int:
    """The group size a linear with `in_features` inputs gets (channel and tensor: all its inputs)."""
    return in_features if cfg.group_size in GRANULARITIES else int(cfg.group_size)
