"""What a run reports: FLOPs per token and MFU, the JSONL log, and the loss-curve PNG."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ..checkpoints.atomic import atomic_file
from ..config import ModelConfig


def training_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per trained token: three forwards' worth (the backward computes
    gradients for activations and for weights, each a forward's matmuls; Kaplan et al. 2020), the
    forward from the analysis FLOP model so MFU here and in analysis/ are computed one way."""
    from ..analysis.flops import flops_per_token_prefill

    return 3.0 * flops_per_token_prefill(cfg, seq_len)


def measure_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.3) -> float:
    """FLOP/s of square matmuls in `dtype` on `device`, as the denominator of MFU when no peak is
    given (a datasheet figure assumes clocks and instructions this machine may not have)."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up: library initialisation, kernel selection
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
        sync()
    return 2.0 * n**3 * count / (time.perf_counter() - start)


class RunLog:
    """RUN_DIR/log.jsonl: one JSON object a line. Training entries have "type": "train", validation
    entries "type": "val". Only the writing rank holds an enabled log."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def write(self, entry: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                pass
        return out

    def truncate_after(self, step: int) -> None:
        """Drop entries past `step`: a resumed run replays those steps and logs them again."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [e for e in self.entries() if e.get("step", 0) <= step]
        with atomic_file(self.path, "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in kept)


def plot_losses(entries: list[dict], png: str | os.PathLike, title: str = "") -> None:
    """Training loss per step and validation loss at its steps, written atomically to `png`."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    from matplotlib import pyplot as plt

    train = [(e["step"], e["loss"]) for e in entries if e.get("type") == "train"]
    val = [(e["step"], e["val_loss"]) for e in entries if e.get("type") == "val"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(png, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
