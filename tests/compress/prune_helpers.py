"""Tiny models and calibration data the pruning tests share."""

import torch

from hybridlm.compress import Calibration
from hybridlm.models.decoder import Decoder
from hybridlm.presets import get_preset

VOCAB = 320


def tiny(seed: int = 0, **overrides) -> Decoder:
    """A 2-layer GQA Llama (6 query heads in 2 KV groups, d_ff 96) with weights far from uniform."""
    shape = dict(vocab_size=VOCAB, n_layers=2, d_model=48, n_heads=6, n_kv_heads=2, head_dim=8, d_ff=96,
                 max_seq_len=128)
    torch.manual_seed(seed)
    model = Decoder(get_preset("llama-tiny", **(shape | overrides))).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    return model


def calibration(n: int = 4, length: int = 33, seed: int = 7) -> Calibration:
    return Calibration(torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed)), "random")


def ids(batch: int = 2, n: int = 20, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))
