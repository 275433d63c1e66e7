"""`ServeConfig`: what `hybridlm serve` was asked for, validated once."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str | int, allow_zero: bool = False) -> int:
    """'512M', '2G', '1.5G', '65536' -> bytes (binary units: 1K = 1024). Anything else is a ValueError."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), flags=re.IGNORECASE)
        if not match:
            raise ValueError(f"cannot read {text!r} as a size in bytes (examples: 512M, 2G, 1073741824)")
        value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback unless the user says otherwise: the API has no TLS
    port: int = 8000  # TCP port; 0 = any free port (tests)
    api_key: str | None = None  # when set, every /v1 request needs `Authorization: Bearer <key>`
    model_name: str = "hybridlm"  # the id /v1/models lists and requests must name
    max_logprobs: int = 20  # most top_logprobs a request may ask for (OpenAI's chat limit)
    shutdown_timeout_s: float = 10.0  # on SIGTERM, in-flight requests get this long to finish, then are cancelled
    stats_interval_s: float = 0.25  # the engine's metrics are re-read at most this often while it runs

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty")
        if not self.model_name:
            raise ValueError("model_name is empty")
        if not 0 <= self.max_logprobs <= 20:
            raise ValueError(f"max_logprobs must be in 0..20, got {self.max_logprobs}")
        if self.shutdown_timeout_s < 0:
            raise ValueError(f"shutdown_timeout_s must be >= 0, got {self.shutdown_timeout_s}")
