"""What the trainer optimises, by model family: one training loop, three objectives.

    decoder   next-token cross-entropy over token shards (causal LM)
    encoder   masked language modelling over token shards (BERT): 15% of tokens are chosen; of
              those 80% become [MASK], 10% a random token, 10% stay; the loss is on chosen tokens only
    seq2seq   cross-entropy of the target given the source (teacher forcing), on a synthetic task
    image-text  CLIP's symmetric contrastive loss over (image, caption) pairs (`clip_loss`), for
              pre-training an image encoder; chosen by the data (task:shapes-captions), not the family

Each objective turns a batch into a loss (`loss`) and a (summed loss, token count) pair for
validation (`eval_sums`). Randomness (MLM masking) draws from torch's global RNG, which the trainer
reseeds every step, so a resumed run masks exactly as the uninterrupted one.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..config import ModelConfig
from .loss import lm_loss

IGNORE = -100  # label of a position without loss (cross_entropy's ignore_index)


def mask_tokens(ids: torch.Tensor, mask_id: int, n_random: int, rate: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking (Devlin et al. 2019, section 3.1). ids (B, T) int64 -> (inputs, labels).

    Each token is chosen with probability `rate`; a chosen token becomes mask_id (80%), a uniform
    random id in [0, n_random) (10%), or stays (10%). labels hold the original id at chosen
    positions and IGNORE elsewhere. At least one token per batch is chosen (a loss needs one).
    """
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    chosen = u < rate
    if not chosen.any():
        chosen.view(-1)[0] = True
    action = torch.rand(ids.shape, generator=generator, device=ids.device)
    inputs = ids.clone()
    inputs[chosen & (action < 0.8)] = mask_id
    randomised = chosen & (action >= 0.8) & (action < 0.9)
    inputs[randomised] = torch.randint(0, n_random, ids.shape, generator=generator, device=ids.device)[randomised]
    labels = ids.masked_fill(~chosen, IGNORE)
    return inputs, labels


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
                   reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the chosen positions only (labels IGNORE elsewhere), in float32."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                           label_smoothing=label_smoothing, reduction=reduction)


class CausalLM:
    def loss(self, model, batch, label_smoothing: float = 0.0, **kwargs) -> torch.Tensor:
        return lm_loss(model(batch[:, :-1], **kwargs), batch[:, 1:], label_smoothing)

    def eval_sums(self, model, batch) -> tuple[float, int]:
        return lm_loss(model(batch[:, :-1]), batch[:, 1:], reduction="sum").item(), batch[:, 1:].numel()


class ContextParallelLM:
    """CausalLM with each sequence split over the --cp ranks: this rank's chunk of the inputs and
    targets through `cache` (parallel/context.ContextParallelCache). Its loss is the chunk's mean,
    which DDP or FSDP2 over the dp x cp ranks averages into the sequence's mean (equal chunks)."""

    def __init__(self, cache):
        self.cache = cache

    def _chunk(self, x: torch.Tensor) -> torch.Tensor:
        return x.chunk(self.cache.cp, dim=1)[self.cache.rank]

    def loss(self, model, batch, label_smoothing: float = 0.0, **kwargs) -> torch.Tensor:
        logits = model(self._chunk(batch[:, :-1]), cache=self.cache, **kwargs)
        return lm_loss(logits, self._chunk(batch[:, 1:]), label_smoothing)

    def eval_sums(self, model, batch) -> tuple[float, int]:
        targets = self._chunk(batch[:, 1:])
        logits = model(self._chunk(batch[:, :-1]), cache=self.cache)
        return lm_loss(logits, targets, reduction="sum").item(), targets.numel()


class MaskedLM:
    """`mask_id` is the model's [MASK]; random replacements come from the data's own vocabulary."""

    def __init__(self, mask_id: int, n_random: int):
        self.mask_id, self.n_random = mask_id, n_random

    def loss(self, model, batch, label_smoothing: float = 0.0, **kwargs) -> torch.Tensor:
        inputs, labels = mask_tokens(batch[:, :-1], self.mask_id, self.n_random)
        return masked_lm_loss(model(inputs, **kwargs), labels, label_smoothing)

    def eval_sums(self, model, batch) -> tuple[float, int]:
        # the same masks at every evaluation, so validation losses are comparable across steps
        g = torch.Generator(device=batch.device).manual_seed(int(batch.sum()) % 2**62)
        inputs, labels = mask_tokens(batch[:, :-1], self.mask_id, self.n_random, generator=g)
        return masked_lm_loss(model(inputs), labels, reduction="sum").item(), int((labels != IGNORE).sum())


class Seq2SeqLM:
    def loss(self, model, batch, label_smoothing: float = 0.0, **kwargs) -> torch.Tensor:
        logits = model(batch.source, batch.decoder_input, batch.source_mask)
        return masked_lm_loss(logits, batch.labels, label_smoothing)

    def eval_sums(self, model, batch) -> tuple[float, int]:
        logits = model(batch.source, batch.decoder_input, batch.source_mask)
        return masked_lm_loss(logits, batch.labels, reduction="sum").item(), batch.n_target_tokens


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
              reduction: str = "mean") -> torch.Tensor:
    """CLIP's objective (Radford et al. 2021, figure 3): image i and text i are a pair, every other
    text of the batch a negative. image, text (B, E) unit vectors; logit_scale a scalar log
    temperature, clamped at ln 100 as CLIP clamps it. Mean of the image->text and text->image
    cross-entropies (per pair summed over both directions / 2 with reduction "sum")."""
    scale = logit_scale.clamp(max=4.6052).exp()
    logits = scale * image.float() @ text.float().T  # (B, B)
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target, reduction=reduction) +
            F.cross_entropy(logits.T, target, reduction=reduction)) / 2


class ContrastiveImageText:
    """CLIP pre-training of an image encoder: the model maps (pixels, ids, mask) to (image vectors,
    text vectors, logit scale) (multimodal/clip.ClipModel); batches are multimodal/shapes.CaptionBatch."""

    def loss(self, model, batch, label_smoothing: float = 0.0, **kwargs) -> torch.Tensor:
        return clip_loss(*model(batch.pixels, batch.ids, batch.mask))

    def eval_sums(self, model, batch) -> tuple[float, int]:
        return clip_loss(*model(batch.pixels, batch.ids, batch.mask), reduction="sum").item(), batch.ids.shape[0]


def objective_for(cfg: ModelConfig, data_vocab_size: int):
    """The objective of a model family (see the module doc)."""
    if cfg.family == "encoder":
        if not cfg.mlm_head or cfg.mask_token_id is None:
            raise ValueError("training an encoder is masked language modelling: it needs mlm_head=True and a "
                             "mask_token_id (the trainer adds one after the data's vocabulary)")
        return MaskedLM(cfg.mask_token_id, data_vocab_size)
    return Seq2SeqLM() if cfg.family == "seq2seq" else CausalLM()


def family_overrides(family: str, overrides: dict, data_vocab_size: int) -> dict:
    """MLM needs a [MASK] the data never holds: one more id after the data's vocabulary."""
    if family != "encoder" or "mask_token_id" in overrides:
        return {}
    return {"mask_token_id": data_vocab_size, "vocab_size": max(overrides.get("vocab_size", 0), data_vocab_size + 1)}


def tied_pairs(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(alias, target) state-dict names of the tied LM head, per family; [] when untied."""
    if not cfg.tie_embeddings:
        return []
    if cfg.family == "encoder":
        return [("mlm.lm_head.weight", "embed.weight")] if cfg.mlm_head else []
    if cfg.family == "seq2seq":
        return [("lm_head.weight", "encoder.embed.weight")]
    return [("lm_head.weight", "embed.weight")]


def open_splits(data_dir: str, seed: int, family: str = "decoder"):
    """(train, val) for a run: token shards, or a synthetic task for a `task:NAME` spec (val may be None).
    family: the model's; a seq2seq model needs (source, target) pairs, which only a task has."""
    from .config import TrainConfigError
    from .synthetic import SyntheticTask, is_task

    if str(data_dir) == "task:shapes-captions":  # image-caption pairs: a CLIP-style dual encoder trains on them
        from ..multimodal.shapes import ShapesCaptions

        return ShapesCaptions("train", seed), ShapesCaptions("val", seed)
    if is_task(data_dir) != (family == "seq2seq"):
        if family == "seq2seq":
            raise TrainConfigError(f"a seq2seq model trains on source -> target pairs, which token shards do not "
                                   f"hold: use --data task:reverse or task:sort (not {data_dir})")
        raise TrainConfigError(f"{data_dir} is a seq2seq task: train it with a seq2seq preset (t5-tiny, "
                               f"transformer-tiny), not a {family} one")
    if is_task(data_dir):
        return SyntheticTask(data_dir, "train", seed), SyntheticTask(data_dir, "val", seed)
    from ..data.shards import ShardError, TokenShards

    train = TokenShards(data_dir, "train")
    try:
        return train, TokenShards(data_dir, "val")
    except ShardError:
        return train, None
