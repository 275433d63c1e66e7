"""Recovery fine-tuning: a few optimizer steps of the ordinary trainer (train/trainer.py) on the
calibration tokens, so a pruned model relearns part of what it lost. There is no training loop
here: the tokens become a one-split shard dataset in a temporary directory and `train(cfg, model)`
trains the given model in place. Masks from unstructured or 2:4 pruning stay applied throughout
(magnitude.MaskGuard), so the sparsity pattern is the same after recovery.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..calibration import Calibration
from .config import PruneError
from .magnitude import MaskGuard


@dataclass
class RecoveryResult:
    steps: int
    loss_before: float  # mean next-token loss on the recovery tokens before fine-tuning
    loss_after: float  # ... and after
    seconds: float


@torch.no_grad()
def mean_loss(model: nn.Module, calib: Calibration) -> float:
    """Mean next-token cross-entropy of `model` over the calibration sequences."""
    total, count = 0.0, 0
    for batch in calib.batches():
        batch = batch.to(model.device)
        logits = model(batch[:, :-1])
        total += F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
        count += batch[:, 1:].numel()
    return total / count


def _write_dataset(ids: torch.Tensor, vocab_size: int, out: Path) -> None:
    from ...data.shards import token_dtype, write_manifest, write_split

    entry = write_split(out, "train", [ids.reshape(-1).numpy()], vocab_size)
    write_manifest(out, {"dtype": token_dtype(vocab_size).name, "vocab_size": vocab_size, "eos_token_id": None,
                         "splits": {"train": entry}, "source": "pruning recovery (calibration tokens)"})


def recover(model: nn.Module, calib: Calibration, steps: int, lr: float = 1e-4, batch: int = 4, seed: int = 0,
            masks: dict[str, torch.Tensor] | None = None, progress: bool = False) -> RecoveryResult:
    """Fine-tune `model` in place for `steps` optimizer steps on the calibration tokens with the
    trainer (AdamW, warm-up then cosine, no weight decay: a short repair, not a new run). masks:
    unstructured masks that must hold throughout. Returns the loss before and after."""
    import time

    from ...train import TrainConfig, train

    if steps < 1:
        raise PruneError("recovery needs at least one step")
    seq_len = calib.ids.shape[1] - 1  # a window is seq_len + 1 tokens: inputs and shifted targets
    if seq_len < 1:
        raise PruneError("recovery needs calibration sequences of at least 2 tokens")
    start = time.perf_counter()
    before = mean_loss(model, calib)
    was_training = model.training
    with tempfile.TemporaryDirectory(prefix="hybridlm-recover-") as work:
        _write_dataset(calib.ids.cpu(), model.config.vocab_size, Path(work) / "data")
        cfg = TrainConfig(preset="(pruned model)", data_dir=str(Path(work) / "data"), out_dir=str(Path(work) / "run"),
                          max_steps=steps, seq_len=seq_len, micro_batch_size=batch, lr=lr,
                          warmup_steps=max(1, steps // 10), weight_decay=0.0, eval_every=0, eval_sequences=0,
                          save_every=0, keep_checkpoints=1, export_hf=False, plot=False, progress=progress,
                          seed=seed, device=model.device.type, precision="fp32")
        with MaskGuard(model, masks or {}):
            train(cfg, model)
    model.train(was_training)
    after = mean_loss(model, calib)
    if not math.isfinite(after):
        raise PruneError(f"recovery fine-tuning diverged (loss {after}); try a smaller --recover-lr")
    return RecoveryResult(steps, before, after, time.perf_counter() - start)
