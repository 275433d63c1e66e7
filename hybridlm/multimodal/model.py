"""`VisionLanguageModel`: a hybridlm `Decoder` (Transformer or hybrid) that also reads images.

Images go with each prompt row as a list: row b has images[b], a (n_b, C, H, W) pixel tensor or a
(n_b, P, d_vision) tensor of precomputed features (n_b may be 0). The prompt marks each image with
`image_token_id` placeholders, in order: one per image (flamingo) or `tokens_per_image` (tokens).

    flamingo  ViT -> Perceiver Resampler -> visual tokens; a gated cross-attention layer before
              every `cross_every`-th decoder block (the first included) reads them, masked per image
    tokens    ViT -> projector -> one embedding per patch, written over the placeholders' embeddings

Both work through the KV cache: `VisionCache` counts the placeholders each row has already passed,
so a later forward knows which image a token follows (flamingo) or which features come next
(tokens). A Mamba state simply consumes the visual embeddings as it consumes text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..cache import Cache
from ..config import ModelConfig
from ..models.decoder import Decoder
from .config import VisionConfig
from .gated_xattn import GatedCrossAttention, image_mask
from .projector import Projector
from .resampler import PerceiverResampler
from .vit import VisionEncoder


class VisionCache(Cache):
    """A decoder `Cache` that also counts each row's image placeholders so far (B,) int64."""

    def __init__(self, cfg: ModelConfig, batch_size: int, **kwargs):
        super().__init__(cfg, batch_size, **kwargs)
        self.placeholders_seen = torch.zeros(batch_size, dtype=torch.long, device=self.device)

    def reorder(self, rows: torch.Tensor) -> None:
        super().reorder(rows)
        self.placeholders_seen = self.placeholders_seen.index_select(0, rows)


@dataclass
class VisualInputs:
    """The images of a batch, encoded once (`VisionLanguageModel.encode_images`).

    tokens (B, S, d_model): every row's visual tokens, images in order, padded with zeros.
    key_image (B, S) int64: the image (0-based in its row) of each visual token, -1 for padding.
    n_images (B,) int64: images per row.
    cross_kv: flamingo only: each gated layer's (k, v) (B, H_kv, S, D), projected once.
    """

    tokens: torch.Tensor
    key_image: torch.Tensor
    n_images: torch.Tensor
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None


class VisionLanguageModel(nn.Module):
    def __init__(self, lm_config: ModelConfig, vision_config: VisionConfig, decoder: Decoder | None = None):
        """decoder: an existing (e.g. pre-trained, to be frozen) LM; a fresh one from lm_config if None."""
        super().__init__()
        if lm_config.family != "decoder":
            raise ValueError(f"a vision-language model needs a decoder LM, not family {lm_config.family!r}")
        if not 0 <= vision_config.image_token_id < lm_config.vocab_size:
            raise ValueError(f"image_token_id {vision_config.image_token_id} is outside the LM's vocabulary "
                             f"of {lm_config.vocab_size}")
        self.config, self.vision_config = lm_config, vision_config
        self.decoder = decoder if decoder is not None else Decoder(lm_config)
        self.vision = VisionEncoder(vision_config)
        v, d = vision_config, lm_config.d_model
        n_blocks = len(lm_config.blocks)
        if v.design == "flamingo":
            self.resampler = PerceiverResampler(v.vit_config(), v.n_latents, v.resampler_layers, d)
            # layer j runs before decoder block j * cross_every, as Flamingo puts one before each LM layer
            self.xattn = nn.ModuleList(GatedCrossAttention(lm_config) for _ in range(-(-n_blocks // v.cross_every)))
        else:
            self.projector = Projector(v.projector, v.d_vision, d)

    @property
    def device(self) -> torch.device:
        return self.decoder.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.dtype

    def vision_parameters(self) -> list[nn.Parameter]:
        """Everything but the LM: what Flamingo trains with the LM frozen."""
        return [p for name, p in self.named_parameters() if not name.startswith("decoder.")]

    # -- images -------------------------------------------------------------------------------
    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """(n, C, H, W) pixels -> ViT features (n, P, d_vision); (n, P, d_vision) features pass."""
        v = self.vision_config
        if image.ndim == 3 and image.shape[-1] == v.d_vision:  # precomputed features
            return image.to(device=self.device, dtype=self.dtype)
        return self.vision(image.to(device=self.device, dtype=self.dtype))

    def encode_images(self, images: list[torch.Tensor]) -> VisualInputs:
        """images: one (n_b, C, H, W) or (n_b, P, d_vision) tensor per row (n_b may be 0). All
        pixel images of the batch go through the ViT in one call."""
        counts = [int(row.shape[0]) for row in images]
        pixel_rows = [i for i, row in enumerate(images) if row.ndim == 4 and row.shape[0]]
        feats: list[torch.Tensor | None] = [None] * len(images)
        if pixel_rows:
            encoded = self.image_features(torch.cat([images[i] for i in pixel_rows])).split(
                [counts[i] for i in pixel_rows])
            for i, f in zip(pixel_rows, encoded):
                feats[i] = f
        for i, row in enumerate(images):
            if feats[i] is None and row.shape[0]:
                feats[i] = self.image_features(row)
        present = [f for f in feats if f is not None]
        b, d = len(images), self.config.d_model
        per_image = self.vision_config.n_latents if self.vision_config.design == "flamingo" else \
            max((f.shape[1] for f in present), default=1)
        width = max(max(counts, default=0), 1) * per_image
        tokens = torch.zeros(b, width, d, device=self.device, dtype=self.dtype)
        key_image = torch.full((b, width), -1, dtype=torch.long, device=self.device)
        if present:
            same = len({f.shape[1] for f in present}) == 1
            mapped = self._visual_tokens(torch.cat(present)).split([f.shape[0] for f in present]) if same else \
                [self._visual_tokens(f) for f in present]
            rows = [i for i, f in enumerate(feats) if f is not None]
            for i, t in zip(rows, mapped):
                n, length = t.shape[:2]
                tokens[i, :n * length] = t.reshape(n * length, d)
                key_image[i, :n * length] = torch.arange(n, device=self.device).repeat_interleave(length)
        visual = VisualInputs(tokens, key_image, torch.tensor(counts, device=self.device))
        if self.vision_config.design == "flamingo":
            visual.cross_kv = [layer.attn.project_memory(tokens) for layer in self.xattn]
        return visual

    def _visual_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """(n, P, d_vision) -> (n, L, d_model): resampled (flamingo) or projected (tokens)."""
        if self.vision_config.design == "flamingo":
            return self.resampler(features)
        return self.projector(features)

    # -- the forward --------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, images: list[torch.Tensor] | VisualInputs | None = None,
                cache: VisionCache | None = None, attention_mask: torch.Tensor | None = None,
                last_only: bool = False) -> torch.Tensor:
        """input_ids (B, T) with placeholders -> logits (B, T, V) (or (B, 1, V) with last_only).

        images: per row (see the module doc), already encoded `VisualInputs`, or None for text only
        (then the LM runs alone and no placeholder may appear). cache: appended to in place.
        """
        if images is None:
            self._check_placeholders(self._placeholders(input_ids, attention_mask), None, cache)
            return self.decoder(input_ids, cache, attention_mask, last_only)
        visual = images if isinstance(images, VisualInputs) else self.encode_images(images)
        if visual.tokens.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{visual.tokens.shape[0]} rows of images for {input_ids.shape[0]} rows of tokens")
        is_ph = self._placeholders(input_ids, attention_mask)
        before = self._check_placeholders(is_ph, visual, cache)
        index = before[:, None] + is_ph.long().cumsum(dim=1)  # (B, T) placeholders at or before each token
        if self.vision_config.design == "tokens":
            embeds = self._place_visual_tokens(input_ids, is_ph, index - 1, visual)
            logits = self.decoder(input_ids, cache, attention_mask, last_only, embeds=embeds)
        else:
            mask = image_mask(index, visual.key_image, self.vision_config.xattn_images == "last")
            every = self.vision_config.cross_every

            def between(i: int, x: torch.Tensor) -> torch.Tensor:  # x is about to enter block i + 1
                j, off = divmod(i + 1, every)
                return x if off or j >= len(self.xattn) else self.xattn[j](x, visual.cross_kv[j], mask)

            logits = self.decoder(input_ids, cache, attention_mask, last_only, between=between)
        if cache is not None:
            cache.placeholders_seen += is_ph.sum(dim=1)
        return logits

    def _place_visual_tokens(self, input_ids, is_ph, index, visual: VisualInputs) -> torch.Tensor:
        """The token embeddings with the row's next visual tokens written over its placeholders."""
        embeds = self.decoder.embed(input_ids)  # (B, T, d)
        at = index.clamp(min=0, max=visual.tokens.shape[1] - 1)
        placed = visual.tokens.gather(1, at[..., None].expand(-1, -1, embeds.shape[-1]))
        return torch.where(is_ph[..., None], placed.to(embeds.dtype), embeds)

    def _placeholders(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T) bool: image placeholders among the real tokens (padding is never one)."""
        is_ph = input_ids == self.vision_config.image_token_id
        return is_ph if attention_mask is None else is_ph & attention_mask.to(torch.bool)

    def _check_placeholders(self, is_ph: torch.Tensor, visual: VisualInputs | None, cache) -> torch.Tensor:
        """Placeholders passed before this forward (B,); errors when placeholders and images do not
        match. A forward without a cache must hold every image's placeholders; with one, a prompt may
        come in chunks (`generate.check_prompts` holds whole prompts to the same rule)."""
        v = self.vision_config
        before = cache.placeholders_seen if cache is not None else torch.zeros(
            is_ph.shape[0], dtype=torch.long, device=is_ph.device)
        found = is_ph.sum(dim=1)
        have = torch.zeros_like(found) if visual is None else visual.n_images * v.tokens_per_image
        whole = cache is None
        total = before + found
        if bool((total > have).any()):
            row = int((total > have).nonzero()[0])
            raise ValueError(f"row {row} has {int(total[row])} image placeholder tokens but only "
                             f"{int(have[row]) // v.tokens_per_image} images ({v.tokens_per_image} placeholders each): "
                             f"more placeholders than images")
        if whole and bool((total < have).any()):
            row = int((total < have).nonzero()[0])
            raise ValueError(f"row {row} has {int(have[row]) // v.tokens_per_image} images but "
                             f"{int(total[row])} image placeholder tokens ({v.tokens_per_image} per image): "
                             f"more images than placeholders")
        return before

    # -- generation ---------------------------------------------------------------------------
    def bind_images(self, images: list[torch.Tensor]) -> "BoundVLM":
        """Encode a batch's images once; the result generates like a decoder-only model."""
        with torch.inference_mode():
            return BoundVLM(self, self.encode_images(images))

    def new_cache(self, batch_size: int, **kwargs) -> VisionCache:
        return VisionCache(self.config, batch_size, dtype=self.dtype, device=self.device, **kwargs)


class BoundVLM:
    """A VisionLanguageModel with its images encoded: the decoder-only interface `generation/`
    drives (config, device, dtype, new_cache, __call__). A placeholder is never generated (its
    logit is -inf): a model writes text, not images."""

    def __init__(self, model: VisionLanguageModel, visual: VisualInputs):
        self.model, self.visual = model, visual
        self.config = model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def new_cache(self, batch_size: int, **kwargs) -> VisionCache:
        if batch_size != self.visual.tokens.shape[0]:
            raise ValueError(f"{batch_size} prompts for {self.visual.tokens.shape[0]} rows of images")
        return self.model.new_cache(batch_size, **kwargs)

    def __call__(self, input_ids: torch.Tensor, cache: VisionCache, attention_mask: torch.Tensor | None = None,
                 last_only: bool = False) -> torch.Tensor:
        logits = self.model(input_ids, self.visual, cache, attention_mask, last_only)
        logits[..., self.model.vision_config.image_token_id] = float("-inf")
        return logits
