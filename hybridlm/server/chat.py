"""Chat messages -> prompt ids, and the token positions where turns end.

A hybrid model's Mamba state cannot be rewound, so the engine keeps state snapshots only where it is
told reuse will happen. In a chat that is where a later request's prompt diverges from this one's:
after the system prompt, after each message, and at the end of this prompt (the next turn's prompt
starts with it plus the assistant's answer). The positions come from rendering the conversation's
prefixes with the template and keeping those whose tokens are a true prefix of the full prompt's
tokens (a BPE merge across the boundary, or a template that renders a prefix differently, would make
a snapshot there useless, so such a position is dropped).
"""

from __future__ import annotations

from typing import Any

from ..tokenizer import Tokenizer


def chat_prompt(tokenizer: Tokenizer, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """(prompt ids with the generation prompt, sorted turn-boundary positions inside them).

    `messages` are {"role", "content"} dicts. Positions are token counts: a snapshot at position p
    holds the state after the first p tokens. The prompt's own end is always included."""
    ids = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True), add_bos=False)
    ids = _with_bos(tokenizer, ids)
    positions = {len(ids)}
    for k in range(1, len(messages) + 1):
        candidates = [tokenizer.apply_chat_template(messages[:k], add_generation_prompt=False)]
        if k < len(messages) and messages[k]["role"] == "assistant":
            # where the request that produced this assistant message ended its prompt
            candidates.append(tokenizer.apply_chat_template(messages[:k], add_generation_prompt=True))
        for text in candidates:
            prefix = _with_bos(tokenizer, tokenizer.encode(text, add_bos=False))
            if 0 < len(prefix) < len(ids) and ids[:len(prefix)] == prefix:
                positions.add(len(prefix))
    return ids, sorted(positions)


def _with_bos(tokenizer: Tokenizer, ids: list[int]) -> list[int]:
    # templates often write BOS themselves; add it only when the tokenizer wants one and it is absent
    bos = tokenizer.bos_token_id
    if tokenizer.add_bos and bos is not None and ids[:1] != [bos]:
        return [bos, *ids]
    return ids
