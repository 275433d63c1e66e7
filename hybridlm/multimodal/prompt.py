"""Image placeholders in prompts and chat messages, and generation with images.

The prompt text marks each image with `IMAGE_PLACEHOLDER` ("<image>"), which the model's tokenizer
encodes as one special token, `VisionConfig.image_token_id`. The tokens design then widens each
placeholder to `tokens_per_image` tokens (one per visual token); flamingo keeps it as one marker.
Chat messages may give `content` as a string or as HF-style parts, [{"type": "image"},
{"type": "text", "text": ...}]; `render_content` turns the parts into placeholder text for any
chat template.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import VisionConfig

IMAGE_PLACEHOLDER = "<image>"


def render_content(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with list contents flattened to text: an image part becomes IMAGE_PLACEHOLDER + "\\n"."""
    out = []
    for m in messages:
        content = m["content"]
        if not isinstance(content, str):
            pieces = []
            for part in content:
                if part.get("type") == "image":
                    pieces.append(IMAGE_PLACEHOLDER + "\n")
                elif part.get("type") == "text":
                    pieces.append(part["text"])
                else:
                    raise ValueError(f"unknown message part type {part.get('type')!r} (known: image, text)")
            content = "".join(pieces)
        out.append({**m, "content": content})
    return out


def with_placeholders(prompt: str, n_images: int) -> str:
    """The prompt with one placeholder per image in front when it has none (as `llava`'s CLI does);
    a prompt that already places its placeholders is returned as it is."""
    if IMAGE_PLACEHOLDER in prompt or n_images == 0:
        return prompt
    return IMAGE_PLACEHOLDER * n_images + "\n" + prompt


def check_prompt_text(prompt: str, n_images: int) -> None:
    """A prompt that places its images needs exactly one placeholder per image (checked on the text,
    before any model loads; `check_prompts` checks the token ids again)."""
    found = prompt.count(IMAGE_PLACEHOLDER)
    if found and found != n_images:
        what = "more images than placeholders" if found < n_images else "more placeholders than images"
        raise ValueError(f"the prompt has {found} {IMAGE_PLACEHOLDER} placeholders for {n_images} images: {what}")


def expand_placeholders(ids: list[int], cfg: VisionConfig) -> list[int]:
    """Each placeholder token -> `tokens_per_image` of them (the tokens design's visual tokens)."""
    out: list[int] = []
    for i in ids:
        out.extend([i] * cfg.tokens_per_image if i == cfg.image_token_id else [i])
    return out


def check_prompts(prompts: list[list[int]], images: list[torch.Tensor], cfg: VisionConfig) -> None:
    """Every row's placeholders match its images, one marker (flamingo) or `tokens_per_image`
    (tokens) per image. Raises ValueError naming the row and the mismatch."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts for {len(images)} rows of images")
    for row, (ids, imgs) in enumerate(zip(prompts, images)):
        found = sum(1 for i in ids if i == cfg.image_token_id)
        n = imgs.shape[0]
        if found != n * cfg.tokens_per_image:
            what = "more images than placeholders" if found < n * cfg.tokens_per_image else \
                "more placeholders than images"
            raise ValueError(f"prompt {row}: {n} images but {found} image placeholder tokens "
                             f"({cfg.tokens_per_image} per image): {what}")


def generate_with_images(model, prompts: list[list[int]], images: list[torch.Tensor], sampling, **kwargs):
    """`generation.generate` for a VisionLanguageModel: prompts are token ids with one placeholder
    per image (widened here for the tokens design), images one tensor per row (see model.py)."""
    from ..generation.generate import generate

    cfg = model.vision_config
    prompts = [expand_placeholders(p, cfg) for p in prompts]
    check_prompts(prompts, images, cfg)
    return generate(model.bind_images(images), prompts, sampling, **kwargs)
